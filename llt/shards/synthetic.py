"""A synthetic corpus written straight to the shard format: random ids, no tokenizer run.

For measuring what the rest of llt costs at a corpus size no test or benchmark could
tokenize (`bench/scale.py` writes 200M samples), and for tests of that cost. The corpus is
complete: shards under their final names and a `summary.json` that `llt verify` and the
trainer's start-up check accept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from llt.shards.format import file_xxh3, shard_file
from llt.shards.manifest import MANIFEST, MANIFEST_VERSION
from llt.shards.writer import SampleBatch, ShardWriter

BLOCK = 1 << 20  # samples generated per step: memory stays flat whatever the corpus size


def write_synthetic_corpus(folder: Path, n: int, length: int, vocab_size: int, fingerprint: str | None,
                           shard_samples: int = 5_000_000, seed: int = 0) -> dict:
    """`n` pretraining samples of `length` random ids below `vocab_size`, in shards of at
    most `shard_samples`, under `folder` (named like an encoded corpus); returns the
    manifest written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    shards = []
    for s, lo in enumerate(range(0, n, shard_samples)):
        count = min(shard_samples, n - lo)
        stem = folder / f"{folder.name}_{s}"
        writer = ShardWriter(stem, dtype, vocab_size, has_loss_mask=False,
                             header_extra={"tokenizer_fingerprint": fingerprint})
        for a in range(0, count, BLOCK):
            k = min(BLOCK, count - a)
            writer.add(SampleBatch(tokens=rng.integers(0, vocab_size, k * length, dtype=np.int64),
                                   lengths=np.full(k, length, np.int64), doc_counts=np.ones(k, np.int64),
                                   doc_starts=np.zeros(k, np.int64)))
        done = writer.close()
        os.replace(done.tmp_bin, shard_file(stem, "bin"))
        os.replace(done.tmp_idx, shard_file(stem, "idx"))
        shards.append({"name": stem.name, "n_samples": done.n_samples, "n_tokens": done.n_tokens,
                       "bin_bytes": shard_file(stem, "bin").stat().st_size,
                       "idx_bytes": shard_file(stem, "idx").stat().st_size,
                       "bin_xxh3_128": done.bin_xxh3, "idx_xxh3_128": file_xxh3(shard_file(stem, "idx"))})
    manifest = {"llt_corpus_version": MANIFEST_VERSION, "corpus_name": folder.name, "encode_type": "pretrain",
                "max_length": length, "packed": False, "synthetic": True, "dtype": dtype,
                "tokenizer": {"vocab_size": vocab_size, "fingerprint": fingerprint}, "shards": shards}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest

"""Writing one shard: `SampleBatch` (samples on their way to disk) and `ShardWriter`.

The layout is `llt.shards.format`'s (docs/format.md); memory stays flat whatever the
shard's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from llt.shards.format import (ALIGN, COPY_CHUNK, DOC_ARRAYS, FLUSH_ENTRIES, PAIRS_VERSION, PREFIX, MAGIC, TOKEN_DTYPES,
                               VALUES_VERSION, VERSION,
                               encode_header, round_up)


@dataclass
class SampleBatch:
    """Samples on their way to disk, as flat numpy arrays (no per-token Python objects).

    `spans` and `span_counts` are None when every token is trained (pretraining).
    All positions are relative to the start of their own sample.
    """

    tokens: np.ndarray  # every sample's ids, concatenated
    lengths: np.ndarray  # int64 [n]
    doc_counts: np.ndarray  # int64 [n]
    doc_starts: np.ndarray  # int64 [k]
    span_counts: np.ndarray | None = None  # int64 [n]
    spans: np.ndarray | None = None  # int64 [m, 2]
    # per-document values by array name (`format.DOC_ARRAYS`): KTO labels, pair margins
    doc_arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def n_trained(self) -> int:
        if self.spans is None:
            return self.n_tokens
        return int((self.spans[:, 1] - self.spans[:, 0]).sum())

    def slice(self, lo: int, hi: int) -> "SampleBatch":
        """Samples lo..hi-1 as a batch of views."""
        def cut(counts, values):
            ends = np.concatenate([[0], np.cumsum(counts)])
            return values[ends[lo]:ends[hi]]
        return SampleBatch(
            tokens=cut(self.lengths, self.tokens),
            lengths=self.lengths[lo:hi],
            doc_counts=self.doc_counts[lo:hi],
            doc_starts=cut(self.doc_counts, self.doc_starts),
            span_counts=None if self.spans is None else self.span_counts[lo:hi],
            spans=None if self.spans is None else cut(self.span_counts, self.spans),
            doc_arrays={k: cut(self.doc_counts, v) for k, v in self.doc_arrays.items()},
        )


class _Spill:
    """An append-only array that keeps at most `FLUSH_ENTRIES` items in RAM."""

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = path, np.dtype(dtype)
        self.file = open(path, "wb")
        self.parts: list[np.ndarray] = []
        self.buffered = self.count = 0

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.parts.append(values)
        self.buffered += values.size
        self.count += values.size
        if self.buffered >= FLUSH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        for part in self.parts:
            self.file.write(part.data)
        self.parts, self.buffered = [], 0

    def close(self) -> None:
        self.flush()
        self.file.close()


@dataclass
class WrittenShard:
    """What `ShardWriter.close` produced: temporary paths plus the manifest entry."""

    tmp_bin: Path
    tmp_idx: Path
    n_samples: int
    n_tokens: int
    n_trained: int
    bin_xxh3: str
    idx_xxh3: str


class ShardWriter:
    """Writes one shard under temporary names; memory stays flat whatever its size.

    Tokens stream straight to the `.bin`; index arrays spill to side files and are
    copied behind the header at `close()`, when the counts are known.
    """

    def __init__(self, tmp_stem: Path, dtype: str, vocab_size: int, has_loss_mask: bool,
                 header_extra: dict | None = None):
        # 1.1 marks preference pairs, 1.2 per-document values (KTO labels, pair margins;
        # docs/format.md); every other corpus stays 1.0
        extra = header_extra or {}
        self.doc_arrays = (["doc_labels"] if extra.get("encode_type") == "kto" else []) + (
            ["doc_margins"] if extra.get("has_margins") else [])
        self.version = VALUES_VERSION if self.doc_arrays else PAIRS_VERSION \
            if extra.get("encode_type") == "preference" else VERSION
        self.tmp_stem = Path(tmp_stem)
        self.dtype = TOKEN_DTYPES[dtype]
        self.vocab_size, self.has_loss_mask = vocab_size, has_loss_mask
        self.header_extra = header_extra or {}
        # ".part" suffixes: no reader or recursive "*.bin" search ever picks these up.
        self.tmp_bin = self.tmp_stem.with_name(self.tmp_stem.name + ".bin.part")
        self.tmp_idx = self.tmp_stem.with_name(self.tmp_stem.name + ".idx.part")
        self._bin = open(self.tmp_bin, "wb")
        self._bin_hash = xxhash.xxh3_128()
        side = lambda name, dt: _Spill(self.tmp_stem.with_name(f"{self.tmp_stem.name}.{name}.part"), dt)
        self._arrays = {"sample_offsets": side("so", "<u8")}
        if has_loss_mask:
            self._arrays.update(span_offsets=side("spo", "<u8"), spans=side("sp", "<u4"))
        self._arrays.update(doc_offsets=side("do", "<u8"), doc_starts=side("ds", "<u4"))
        for name in self.doc_arrays:
            self._arrays[name] = side(name, DOC_ARRAYS[name])
        for name in ("sample_offsets", "span_offsets", "doc_offsets"):
            if name in self._arrays:
                self._arrays[name].append(np.zeros(1, np.uint64))
        self.n_samples = self.n_tokens = self.n_trained = self.n_spans = self.n_docs = 0

    def add(self, batch: SampleBatch) -> None:
        """Append every sample of `batch` in order."""
        if len(batch) == 0:
            return
        ids = np.ascontiguousarray(batch.tokens, dtype=self.dtype)
        self._bin.write(ids.data)
        self._bin_hash.update(ids.data)
        a = self._arrays
        a["sample_offsets"].append(self.n_tokens + np.cumsum(batch.lengths, dtype=np.uint64))
        if self.has_loss_mask:
            a["span_offsets"].append(self.n_spans + np.cumsum(batch.span_counts, dtype=np.uint64))
            a["spans"].append(batch.spans.reshape(-1))
            self.n_spans += len(batch.spans)
        a["doc_offsets"].append(self.n_docs + np.cumsum(batch.doc_counts, dtype=np.uint64))
        a["doc_starts"].append(batch.doc_starts)
        for name in self.doc_arrays:
            values = batch.doc_arrays.get(name)
            if values is None or len(values) != len(batch.doc_starts):
                raise ValueError(f"this shard needs one {name} value per document")
            a[name].append(values)
        self.n_docs += len(batch.doc_starts)
        self.n_samples += len(batch)
        self.n_tokens += int(ids.size)
        self.n_trained += batch.n_trained

    def close(self) -> WrittenShard:
        """Finish both files (fsynced) and return their temporary paths and checksums."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        for spill in self._arrays.values():
            spill.close()
        header = {
            "dtype": {2: "uint16", 4: "uint32"}[self.dtype.itemsize],
            "vocab_size": self.vocab_size,
            "n_samples": self.n_samples,
            "n_tokens": self.n_tokens,
            "n_trained_tokens": self.n_trained,
            "has_loss_mask": self.has_loss_mask,
            "n_spans": self.n_spans,
            "n_docs": self.n_docs,
            **self.header_extra,
        }
        # Array offsets depend on the header's length, which depends on the offsets:
        # lay the arrays out after a header padded to a fixed upper bound.
        layout, body_len = {}, 0
        for name, spill in self._arrays.items():
            layout[name] = [body_len, spill.dtype.str[1:], spill.count]
            body_len += round_up(spill.count * spill.dtype.itemsize, 8)
        header_json = encode_header(header, layout)
        with open(self.tmp_idx, "wb") as out:
            h = xxhash.xxh3_128()
            prefix = PREFIX.pack(MAGIC, *self.version, len(header_json)) + header_json
            prefix += b"\x00" * (round_up(len(prefix), ALIGN) - len(prefix))
            out.write(prefix)
            h.update(prefix)
            for spill in self._arrays.values():
                with open(spill.path, "rb") as src:
                    while chunk := src.read(COPY_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                pad = round_up(spill.count * spill.dtype.itemsize, 8) - spill.count * spill.dtype.itemsize
                out.write(b"\x00" * pad)
                h.update(b"\x00" * pad)
                spill.path.unlink()
            out.flush()
            os.fsync(out.fileno())
        return WrittenShard(self.tmp_bin, self.tmp_idx, self.n_samples, self.n_tokens,
                            self.n_trained, self._bin_hash.hexdigest(), h.hexdigest())

    def abort(self) -> None:
        """Close and delete everything this writer created."""
        self._bin.close()
        for spill in self._arrays.values():
            spill.file.close()
            spill.path.unlink(missing_ok=True)
        self.tmp_bin.unlink(missing_ok=True)
        self.tmp_idx.unlink(missing_ok=True)

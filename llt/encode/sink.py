"""A worker's output: samples -> (packed) shards that roll over at `--tokens_per_file`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from llt.encode.config import EncodeArgs
from llt.encode.packing import Packer
from llt.encode.builders.base import EncodeStats
from llt.encode.tokenizer_info import TokenizerInfo
from llt.shards.writer import SampleBatch, ShardWriter, WrittenShard


class ShardSink:
    """A worker's output: rolls to a new shard at `tokens_per_file`, packs if asked."""

    def __init__(self, tmp_dir: Path, worker: int, dtype: str, info: TokenizerInfo,
                 args: EncodeArgs, has_loss_mask: bool, fingerprint: Callable[[], str] | None = None):
        self.tmp_dir, self.worker, self.dtype, self.info = tmp_dir, worker, dtype, info
        # The tokenizer fingerprint goes in each header when the shard closes: the parent
        # computes it while the workers start (0.07 s for a 151k vocabulary).
        self.fingerprint = fingerprint or (lambda: info.fingerprint)
        self.args, self.has_loss_mask = args, has_loss_mask
        self.limit = int(args.tokens_per_file)
        self.packer = Packer(args.max_length, has_loss_mask) if args.merge_data and has_loss_mask else None
        self.stats = EncodeStats()
        self.shards: list[WrittenShard] = []
        self.writer: ShardWriter | None = None

    def _new_writer(self) -> ShardWriter:
        header = {
            "tokenizer_fingerprint": "",  # set at close
            "encode_type": self.args.encode_type,
            "max_length": self.args.max_length,
            "packed": bool(self.packer),
            "corpus_name": self.args.corpus_name,
        }
        if self.args.encode_type == "preference" and self.args.margin_field:
            header["has_margins"] = True  # each pair's margin in `doc_margins` (format 1.2)
        stem = self.tmp_dir / f"w{self.worker:03d}_{len(self.shards):05d}"
        return ShardWriter(stem, self.dtype, self.info.vocab_size, self.has_loss_mask, header)

    def add(self, batch: SampleBatch | None) -> None:
        if self.packer is not None:
            batch = self.packer.add(batch)
        self._write(batch)

    def _write(self, batch: SampleBatch | None) -> None:
        if batch is None or not len(batch):
            return
        if self.packer is not None:
            self.stats.packed_capacity += len(batch) * self.args.max_length
        self.stats.samples += len(batch)
        self.stats.tokens += batch.n_tokens
        self.stats.trained_tokens += batch.n_trained
        while len(batch):
            if self.writer is None:
                self.writer = self._new_writer()
            room = self.limit - self.writer.n_tokens
            fit = int(np.searchsorted(np.cumsum(batch.lengths), room, side="right"))
            if fit == 0 and self.writer.n_samples == 0:
                fit = 1  # a sample longer than a whole shard gets a shard of its own
            if fit:
                self.writer.add(batch.slice(0, fit))
                batch = batch.slice(fit, len(batch))
            if len(batch) or self.writer.n_tokens >= self.limit:
                self._close_writer()

    def _close_writer(self) -> None:
        self.writer.header_extra["tokenizer_fingerprint"] = self.fingerprint()
        self.shards.append(self.writer.close())
        self.writer = None

    def close(self) -> list[WrittenShard]:
        if self.packer is not None:
            self._write(self.packer.flush())
        if self.writer is not None and self.writer.n_samples:
            self._close_writer()
        elif self.writer is not None:
            self.writer.abort()
        self.writer = None
        return self.shards

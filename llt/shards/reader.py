"""Reading one shard: `ShardReader`, memory-mapped, O(1) per sample.

The layout is `llt.shards.format`'s (docs/format.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llt.shards.format import DOC_ARRAYS, ShardFormatError, TOKEN_DTYPES, read_header, shard_file, shard_stem


class ShardReader:
    """Reads one shard through `np.memmap`: O(1) per sample, zero-copy token slices.

    Examples:
        >>> r = ShardReader("out/wiki/wiki_0.idx")  # doctest: +SKIP
        >>> ids = r.tokens(0)        # doctest: +SKIP
        >>> mask = r.loss_mask(0)    # doctest: +SKIP
        >>> docs = r.doc_starts(0)   # doctest: +SKIP
        >>> len(ids) == len(mask) and docs[0] == 0  # doctest: +SKIP
        True
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        stem = shard_stem(path)
        self.idx_path, self.bin_path = shard_file(stem, "idx"), shard_file(stem, "bin")
        self.header = read_header(self.idx_path)
        h = self.header
        self.dtype = TOKEN_DTYPES[h["dtype"]]
        self.vocab_size, self.n_samples, self.n_tokens = h["vocab_size"], h["n_samples"], h["n_tokens"]
        self.has_loss_mask = h["has_loss_mask"]
        if not self.bin_path.exists():
            raise ShardFormatError(f"{self.bin_path}: missing (its index {self.idx_path.name} exists)")
        want = self.n_tokens * self.dtype.itemsize
        got = self.bin_path.stat().st_size
        if got != want:
            raise ShardFormatError(
                f"{self.bin_path}: {got:,} bytes, but its index says {self.n_tokens:,} tokens "
                f"of {self.dtype.itemsize} bytes = {want:,} bytes (truncated or mismatched shard)"
            )
        idx = np.memmap(self.idx_path, dtype=np.uint8, mode="r")
        base = h["_body_start"]
        self._arr = {}
        for name, (off, dt, count) in h["arrays"].items():  # checked against the file by read_header
            self._arr[name] = idx[base + off:base + off + count * int(dt[1:])].view("<" + dt)
        self.sample_offsets = self._arr["sample_offsets"]
        if len(self.sample_offsets) != self.n_samples + 1 or (
                self.n_samples and int(self.sample_offsets[-1]) != self.n_tokens):
            raise ShardFormatError(f"{self.idx_path}: sample offsets disagree with the header counts")
        # Token ids: a memmap opened on first use, so a reader pickles cheaply into
        # DataLoader workers and each worker maps the file itself.
        self._tokens: np.memmap | None = None

    def __len__(self) -> int:
        return self.n_samples

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokens"] = None
        return state

    @property
    def token_array(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = (np.memmap(self.bin_path, dtype=self.dtype, mode="r")
                            if self.n_tokens else np.zeros(0, self.dtype))
        return self._tokens

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.sample_offsets).astype(np.int64)

    def tokens(self, i: int) -> np.ndarray:
        """Sample i's token ids (a read-only view into the memory map)."""
        lo, hi = self.sample_offsets[i], self.sample_offsets[i + 1]
        return self.token_array[int(lo):int(hi)]

    def loss_spans(self, i: int) -> np.ndarray:
        """Sample i's trained (start, end) ranges as an int64 array of shape [k, 2]."""
        if not self.has_loss_mask:
            return np.array([[0, self.sample_offsets[i + 1] - self.sample_offsets[i]]], np.int64)
        lo, hi = self._arr["span_offsets"][i], self._arr["span_offsets"][i + 1]
        return self._arr["spans"][2 * int(lo):2 * int(hi)].reshape(-1, 2).astype(np.int64)

    def loss_mask(self, i: int) -> np.ndarray:
        """Sample i's per-token bool mask: True where the token is trained on."""
        length = int(self.sample_offsets[i + 1] - self.sample_offsets[i])
        mask = np.zeros(length, dtype=bool)
        for start, end in self.loss_spans(i):
            mask[start:end] = True
        return mask

    def doc_starts(self, i: int) -> np.ndarray:
        """Start positions of the documents packed into sample i (first is 0)."""
        lo, hi = self._arr["doc_offsets"][i], self._arr["doc_offsets"][i + 1]
        return self._arr["doc_starts"][int(lo):int(hi)].astype(np.int64)

    @property
    def labelled(self) -> bool:
        """Whether documents carry KTO labels (format 1.2, `doc_labels`)."""
        return "doc_labels" in self._arr

    @property
    def doc_array_names(self) -> list[str]:
        """The per-document value arrays this shard holds (format 1.2)."""
        return [name for name in DOC_ARRAYS if name in self._arr]

    def doc_values(self, name: str, i: int) -> np.ndarray:
        """Sample i's documents' values in per-document array `name`."""
        lo, hi = self._arr["doc_offsets"][i], self._arr["doc_offsets"][i + 1]
        return self._arr[name][int(lo):int(hi)]

    def doc_labels(self, i: int) -> np.ndarray:
        """The labels of sample i's documents (KTO corpora): True desirable, False undesirable."""
        return self.doc_values("doc_labels", i).astype(bool)

    def array(self, name: str) -> np.ndarray:
        """A raw index array by its docs/format.md name (for verification tools)."""
        return self._arr[name]

"""The llt shard format: the one writer and the one reader of `.bin`/`.idx` files.

A shard is two files (full description in docs/format.md):

* `NAME.bin`: the token ids of every sample, back to back, raw little-endian
  `uint16` or `uint32`, no header and no padding, so `np.memmap` slices it zero-copy.
* `NAME.idx`: an 8-byte magic, a version, a JSON header (dtype, vocabulary size,
  counts, tokenizer fingerprint), then 8-byte-aligned little-endian arrays:

  =================  ==============  =====================================================
  array              dtype, length   meaning
  =================  ==============  =====================================================
  `sample_offsets`   u64, n+1        sample i is `bin[sample_offsets[i]:sample_offsets[i+1]]`
  `span_offsets`     u64, n+1        sample i's loss spans are `spans[span_offsets[i]:...]`
  `spans`            u32, 2*m        (start, end) token ranges trained on, relative to
                                     the sample start; absent when every token is trained
  `doc_offsets`      u64, n+1        sample i's documents start at `doc_starts[doc_offsets[i]:...]`
  `doc_starts`       u32, k          document start positions relative to the sample start
                                     (always begins with 0)
  =================  ==============  =====================================================

Both files are written under temporary names and renamed by the caller once complete,
the `.idx` last, so a half-written shard is never found under a final name.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from llt.errors import LltError

MAGIC = b"LLTSHRD\x00"
VERSION = (1, 0)  # (major, minor): readers refuse another major, accept any minor
# magic, major, minor, byte length of the JSON header that follows
_PREFIX = struct.Struct("<8sHHI")
_ALIGN = 64  # arrays start on a cache-line boundary
_COPY_CHUNK = 16 << 20  # bytes per read when assembling or hashing files
_FLUSH_ENTRIES = 1 << 20  # index entries buffered in RAM before spilling to a side file

TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# The seed spelled the dtypes as signed ints; ids are never negative, so they map to the
# unsigned type of the same width (int16 then holds ids up to 65,535, not 32,767).
DTYPE_ALIASES = {"int16": "uint16", "uint16": "uint16", "int32": "uint32", "uint32": "uint32"}


class ShardFormatError(LltError, ValueError):
    """A shard file is damaged, truncated, or not an llt shard. The message names the file."""


def choose_dtype(requested: str, vocab_size: int) -> str:
    """Return the on-disk token dtype name for `--save_dtype` and a vocabulary size.

    Examples:
        >>> choose_dtype("auto", 49_152)
        'uint16'
        >>> choose_dtype("auto", 151_665)
        'uint32'
        >>> choose_dtype("int16", 151_665)
        Traceback (most recent call last):
        ...
        ValueError: --save_dtype int16 stores ids below 65,536, but the tokenizer has 151,665 tokens; use --save_dtype int32 or auto
    """
    if requested == "auto":
        return "uint16" if vocab_size <= 1 << 16 else "uint32"
    if requested not in DTYPE_ALIASES:
        raise ValueError(
            f"--save_dtype {requested!r} is not one of auto, {', '.join(DTYPE_ALIASES)}"
        )
    name = DTYPE_ALIASES[requested]
    limit = np.iinfo(TOKEN_DTYPES[name]).max + 1
    if vocab_size > limit:
        raise ValueError(
            f"--save_dtype {requested} stores ids below {limit:,}, but the tokenizer has "
            f"{vocab_size:,} tokens; use --save_dtype int32 or auto"
        )
    return name


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
        )


def file_xxh3(path: Path) -> str:
    """xxh3-128 hex digest of a whole file, read in chunks so memory stays flat."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Spill:
    """An append-only array that keeps at most `_FLUSH_ENTRIES` items in RAM."""

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
        if self.buffered >= _FLUSH_ENTRIES:
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
            body_len += _round_up(spill.count * spill.dtype.itemsize, 8)
        header_json = _encode_header(header, layout)
        with open(self.tmp_idx, "wb") as out:
            h = xxhash.xxh3_128()
            prefix = _PREFIX.pack(MAGIC, *VERSION, len(header_json)) + header_json
            prefix += b"\x00" * (_round_up(len(prefix), _ALIGN) - len(prefix))
            out.write(prefix)
            h.update(prefix)
            for spill in self._arrays.values():
                with open(spill.path, "rb") as src:
                    while chunk := src.read(_COPY_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                pad = _round_up(spill.count * spill.dtype.itemsize, 8) - spill.count * spill.dtype.itemsize
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


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _encode_header(header: dict, layout: dict) -> bytes:
    """JSON header whose `arrays` offsets are relative to the first aligned byte after it."""
    return json.dumps({**header, "arrays": layout}, sort_keys=True).encode()


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
        stem = path.with_suffix("") if path.suffix in (".idx", ".bin") else path
        self.idx_path, self.bin_path = stem.with_suffix(".idx"), stem.with_suffix(".bin")
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
        for name, (off, dt, count) in h["arrays"].items():
            end = base + off + count * np.dtype(dt).itemsize
            if end > idx.size:
                raise ShardFormatError(f"{self.idx_path}: array {name} runs past the end of the file")
            self._arr[name] = idx[base + off:end].view("<" + dt)
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

    def array(self, name: str) -> np.ndarray:
        """A raw index array by its docs/format.md name (for verification tools)."""
        return self._arr[name]


def read_header(idx_path: Path) -> dict:
    """Parse and check an `.idx` header; errors name the file and what is wrong."""
    idx_path = Path(idx_path)
    try:
        with open(idx_path, "rb") as f:
            raw = f.read(_PREFIX.size)
            if len(raw) < _PREFIX.size:
                raise ShardFormatError(f"{idx_path}: too short to be an llt shard index ({len(raw)} bytes)")
            magic, major, minor, hlen = _PREFIX.unpack(raw)
            if magic != MAGIC:
                raise ShardFormatError(
                    f"{idx_path}: not an llt shard index (magic {magic!r}, expected {MAGIC!r}); "
                    "files from the seed's pickle format must be re-encoded with `llt encode`"
                )
            if major != VERSION[0]:
                raise ShardFormatError(
                    f"{idx_path}: shard format version {major}.{minor}, this llt reads "
                    f"version {VERSION[0]}.x; re-encode the data or upgrade llt"
                )
            body = f.read(hlen)
    except FileNotFoundError:
        raise ShardFormatError(f"{idx_path}: no such shard index") from None
    try:
        header = json.loads(body)
        header["arrays"]
        if header["dtype"] not in TOKEN_DTYPES:
            raise ValueError(f"unknown dtype {header['dtype']!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise ShardFormatError(f"{idx_path}: damaged header ({e})") from None
    header["_body_start"] = _round_up(_PREFIX.size + hlen, _ALIGN)
    header["_version"] = f"{major}.{minor}"
    return header

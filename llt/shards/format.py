"""The llt shard format: its constants, the `.idx` header, and the token dtype.

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
  `doc_labels`       u8, k           KTO corpora only (version 1.2): each document's label,
                                     1 desirable, 0 undesirable
  `doc_margins`      f32, k          pair corpora with margins only (version 1.2): each
                                     document's pair margin (the reward model's target gap)
  =================  ==============  =====================================================

`llt.shards.writer` writes shards and `llt.shards.reader` reads them; both take the
layout from here. Both files are written under temporary names and renamed by the
caller once complete, the `.idx` last, so a half-written shard is never found under a
final name.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import xxhash

from llt.errors import LltError

MAGIC = b"LLTSHRD\x00"
VERSION = (1, 0)  # (major, minor): readers refuse another major, accept any minor
# Preference pairs (encode_type "preference": every sample is [chosen, rejected] documents,
# or several such pairs when packed). A 1.0 reader reads them as two-document samples and
# knows nothing of the pairing; llt's SFT refuses them and its DPO recipe needs them.
PAIRS_VERSION = (1, 1)
# Per-document values: KTO examples (encode_type "kto": each document is prompt + completion
# with a desirable / undesirable label in `doc_labels`) and pairs with margins (`doc_margins`,
# header `has_margins`). A 1.1 reader refuses the unknown array, so no older llt trains these
# without their values.
VALUES_VERSION = KTO_VERSION = (1, 2)
# Per-document arrays: name -> dtype as written
DOC_ARRAYS = {"doc_labels": "<u1", "doc_margins": "<f4"}
# magic, major, minor, byte length of the JSON header that follows
PREFIX = struct.Struct("<8sHHI")
ALIGN = 64  # arrays start on a cache-line boundary
COPY_CHUNK = 16 << 20  # bytes per read when assembling files
HASH_CHUNK = 4 << 20  # bytes per read when hashing a file
FLUSH_ENTRIES = 1 << 20  # index entries buffered in RAM before spilling to a side file

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


def shard_file(stem: Path, ext: str) -> Path:
    """`stem` + ".idx"/".bin". Not `with_suffix`: a corpus named `qwen2.5-chat` has shards
    `qwen2.5-chat_0`, whose "suffix" `.5-chat_0` it would replace.

    Examples:
        >>> shard_file(Path("out/qwen2.5-chat/qwen2.5-chat_0"), "idx").name
        'qwen2.5-chat_0.idx'
    """
    return stem.with_name(f"{stem.name}.{ext}")


def shard_stem(path: Path) -> Path:
    """A shard's path without its `.idx`/`.bin` (a path without one is returned as is)."""
    return path.with_name(path.name[:-4]) if path.name.endswith((".idx", ".bin")) else path


def file_xxh3(path: Path) -> str:
    """xxh3-128 hex digest of a whole file, read in chunks so memory stays flat."""
    h = xxhash.xxh3_128()
    buf = bytearray(HASH_CHUNK)  # one buffer reused: a rank hashing gigabytes allocates 4 MB
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def encode_header(header: dict, layout: dict) -> bytes:
    """JSON header whose `arrays` offsets are relative to the first aligned byte after it."""
    return json.dumps({**header, "arrays": layout}, sort_keys=True).encode()


def read_header(idx_path: Path) -> dict:
    """Parse and check an `.idx` header; errors name the file and what is wrong."""
    idx_path = Path(idx_path)
    try:
        with open(idx_path, "rb") as f:
            raw = f.read(PREFIX.size)
            if len(raw) < PREFIX.size:
                raise ShardFormatError(f"{idx_path}: too short to be an llt shard index ({len(raw)} bytes)")
            magic, major, minor, hlen = PREFIX.unpack(raw)
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
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardFormatError(f"{idx_path}: damaged header (not JSON: {e})") from None
    body_start = round_up(PREFIX.size + hlen, ALIGN)
    check_header(header, idx_path, idx_path.stat().st_size - body_start)
    header["_body_start"] = body_start
    header["_version"] = f"{major}.{minor}"
    return header


# Each array's dtype (docs/format.md): written "u8"/"u4"; "<u8"/"<u4" (numpy's explicit
# little-endian spelling) are accepted as the same; any other byte order or type is refused.
ARRAY_DTYPES = {"sample_offsets": "u8", "span_offsets": "u8", "spans": "u4", "doc_offsets": "u8", "doc_starts": "u4",
                "doc_labels": "u1", "doc_margins": "f4"}
_COUNTS = ("vocab_size", "n_samples", "n_tokens", "n_trained_tokens", "n_spans", "n_docs")


def is_count(v) -> bool:
    """An integer >= 0 that fits an int64 (JSON booleans are not counts)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63


def check_header(header, idx_path: Path, body_bytes: int) -> None:
    """Every header field against the spec before any array is touched: types, ranges,
    array dtypes, counts that agree, and arrays that lie inside the file. Normalises array
    dtypes to the spec's spelling. Raises `ShardFormatError` naming the file and field."""
    def bad(what: str):
        raise ShardFormatError(f"{idx_path}: damaged header: {what}")

    if not isinstance(header, dict):
        bad(f"a JSON {type(header).__name__}, not an object")
    if not isinstance(header.get("dtype"), str) or header["dtype"] not in TOKEN_DTYPES:
        bad(f"dtype {header.get('dtype')!r} is not one of {', '.join(TOKEN_DTYPES)}")
    for key in _COUNTS:
        if key in header and not is_count(header[key]):
            bad(f"{key} {header[key]!r} is not a count (an integer >= 0)")
    for key in _COUNTS:
        if key not in header:
            bad(f"no {key}")
    if header["vocab_size"] < 1:
        bad("vocab_size 0")
    if not isinstance(header.get("has_margins", False), bool):
        bad(f"has_margins {header['has_margins']!r} is not true or false")
    if not isinstance(header.get("has_loss_mask"), bool):
        bad(f"has_loss_mask {header.get('has_loss_mask')!r} is not true or false")
    fp = header.get("tokenizer_fingerprint")
    if fp is not None and not isinstance(fp, str):
        bad(f"tokenizer_fingerprint {fp!r} is not a string")
    arrays = header.get("arrays")
    if not isinstance(arrays, dict):
        bad(f"arrays {arrays!r} is not an object")
    need = {"sample_offsets", "doc_offsets", "doc_starts"} | (
        {"span_offsets", "spans"} if header["has_loss_mask"] else set()) | (
        {"doc_labels"} if header.get("encode_type") == "kto" else set()) | (
        {"doc_margins"} if header.get("has_margins") else set())
    missing, unknown = need - set(arrays), set(arrays) - set(ARRAY_DTYPES)
    if missing or unknown:
        bad(f"arrays {sorted(missing)} missing" if missing else f"unknown array {sorted(unknown)[0]!r}")
    n = header["n_samples"]
    want = {"sample_offsets": n + 1, "span_offsets": n + 1, "doc_offsets": n + 1,
            "spans": 2 * header["n_spans"], "doc_starts": header["n_docs"], "doc_labels": header["n_docs"], "doc_margins": header["n_docs"]}
    for name, entry in arrays.items():
        if not (isinstance(entry, list) and len(entry) == 3 and is_count(entry[0]) and is_count(entry[2])
                and isinstance(entry[1], str)):
            bad(f"array {name} is {entry!r}, not [offset, dtype, count]")
        offset, dtype, count = entry
        spelled = dtype[1:] if dtype.startswith("<") else dtype
        if spelled != ARRAY_DTYPES[name]:
            bad(f"array {name} has dtype {dtype!r}; the format's is {ARRAY_DTYPES[name]!r} (little-endian)")
        if count != want[name]:
            bad(f"array {name} holds {count:,} entries; the counts say {want[name]:,}")
        size = int(spelled[1:])
        if offset % 8 or offset + count * size > body_bytes:
            bad(f"array {name} at offset {offset:,} ({count:,} x {size} bytes) is "
                + ("not 8-byte aligned" if offset % 8 else f"past the end of the file's {body_bytes:,} bytes"))
        entry[1] = spelled

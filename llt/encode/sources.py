"""Where the encoder's records come from, in batches, each record traceable for errors.

Two kinds of input:

* **Split inputs** (JSONL, Parquet, a HF `datasets` folder made by `save_to_disk`): the
  parent only plans; each worker opens the files itself and reads its own contiguous part
  (a byte range, row groups, or rows), so no record crosses a process boundary.
* **Streamed inputs** (a `data_loader.py`, a JSON array, CSV/TSV): one reader in the
  parent, whose batches of raw records go to the workers through bounded queues.

Every batch comes with `where(k)`, the text that names record k in an error message
("data/train.jsonl: line 12", "loader.py: data_loader() record 7").
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from llt.errors import LltError

Batch = tuple[list, Callable[[int], str]]
SPLIT_SUFFIXES = (".jsonl", ".ndjson", ".parquet")
STREAM_SUFFIXES = (".json", ".csv", ".tsv")


class SourceError(LltError):
    """An input file or data loader cannot be read. The message names it."""


@dataclass
class Part:
    """A contiguous slice of one split input: bytes [start, end) of a JSONL file, row
    groups [start, end) of a Parquet file, or rows [start, end) of a HF dataset."""

    kind: str  # "jsonl" | "parquet" | "hf" | "dataset" | "stream" (llt.encode.hub)
    path: str
    start: int
    end: int
    split: str | None = None  # HF DatasetDict split
    dataset: object = None  # kinds "dataset" and "stream": the `llt.encode.hub.DatasetSpec`


# ---------------------------------------------------------------------- discovery
def _is_hf_folder(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json",
                                                          "dataset_dict.json"))


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1] == b"["
    return False


def find_inputs(paths: list[str]) -> list[tuple[str, str]]:
    """Expand `--input_path` values into (kind, path) pairs, in a stable order."""
    found = []
    for raw in paths:
        if "://" in raw:
            found.append(("url", raw))  # read through datasets + fsspec (llt.encode.hub)
            continue
        p = Path(raw)
        if _is_hf_folder(p):
            found.append(("hf", str(p)))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix in SPLIT_SUFFIXES + STREAM_SUFFIXES)
            if not files:
                raise SourceError(f"--input_path {raw}: no .jsonl, .json, .parquet, .csv or "
                                  ".tsv files in this folder")
            found += [_kind_of(f) for f in files]
        elif p.is_file():
            found.append(_kind_of(p))
        else:
            raise SourceError(f"--input_path {raw}: no such file or folder")
    return found


def _kind_of(p: Path) -> tuple[str, str]:
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson") or (suffix == ".json" and not _is_json_array(p)):
        return "jsonl", str(p)
    if suffix == ".parquet":
        return "parquet", str(p)
    if suffix in (".json", ".csv", ".tsv"):
        return suffix[1:], str(p)
    raise SourceError(f"--input_path {p}: unknown file type {suffix!r}; use .jsonl, .json, "
                      ".parquet, .csv, .tsv, a HF datasets folder or --data_loader_path")


# ---------------------------------------------------------------------- split inputs
def _hf_dataset(path: str, split: str | None):
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"--input_path {path}: a DatasetDict with splits "
                              f"{sorted(ds)}; choose one with --split (now {split!r})")
        ds = ds[split]
    return ds


def plan_parts(inputs: list[tuple[str, str]], workers: int, split: str | None,
               extra: list[tuple[Part, float]] = ()) -> list[list[Part]]:
    """Cut the split inputs into `workers` contiguous groups of about equal weight.

    Weight is bytes for JSONL, compressed bytes for Parquet row groups, rows for HF
    datasets. Order is kept: worker 0 reads the beginning, the last worker the end.
    """
    units: list[tuple[Part, float]] = []  # (part, weight) in input order
    for kind, path in inputs:
        if kind == "jsonl":
            size = os.path.getsize(path)
            if size:
                units.append((Part("jsonl", path, 0, size), float(size)))
        elif kind == "parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                units.append((Part("parquet", path, g, g + 1), float(meta.row_group(g).total_byte_size)))
        elif kind == "hf":
            n = len(_hf_dataset(path, split))
            if n:
                units.append((Part("hf", path, 0, n, split), float(n)))
    units += extra  # row ranges of --dataset / URL inputs (llt.encode.hub)
    total = sum(w for _, w in units)
    groups: list[list[Part]] = [[] for _ in range(workers)]
    target, g, acc = total / workers, 0, 0.0
    for part, weight in units:
        while part is not None:
            while g < workers - 1 and acc >= target * (g + 1) - 1e-9:
                g += 1  # an indivisible unit overshot this worker's share
            room = target * (g + 1) - acc
            divisible = part.kind != "parquet" and part.end - part.start > 1
            if weight <= room or g == workers - 1 or not divisible:
                groups[g].append(part)
                acc += weight
                part = None
                continue
            # Cut this unit where the current worker's share ends.
            cut = part.start + max(1, int((part.end - part.start) * room / weight))
            head, tail = Part(part.kind, part.path, part.start, cut, part.split, part.dataset), \
                Part(part.kind, part.path, cut, part.end, part.split, part.dataset)
            head_w = weight * (cut - part.start) / (part.end - part.start)
            groups[g].append(head)
            acc += head_w
            g += 1
            part, weight = tail, weight - head_w
    return [grp for grp in groups if grp]


def _line_number(path: str, offset: int) -> int:
    """1-based line number of the byte at `offset` (counted only when an error needs it)."""
    n, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            chunk = f.read(min(1 << 24, offset - done))
            if not chunk:
                break
            n += chunk.count(b"\n")
            done += len(chunk)
    return n


def _line_where(path: str, offsets: list[int]) -> Callable[[int], str]:
    return lambda k: f"{path}: line {_line_number(path, offsets[k])}"


def _jsonl_batches(part: Part, batch_size: int) -> Iterator[Batch]:
    with open(part.path, "rb") as f:
        pos = part.start
        if pos:
            # The line that straddles our start belongs to the previous part.
            f.seek(pos - 1)
            if f.read(1) != b"\n":
                pos += len(f.readline())
        f.seek(pos)
        records, offsets = [], []
        for line in f:
            if pos >= part.end:
                break
            start, pos = pos, pos + len(line)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except UnicodeDecodeError as e:
                raise SourceError(f"{part.path}: line {_line_number(part.path, start)}: "
                                  f"invalid UTF-8 ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise SourceError(f"{part.path}: line {_line_number(part.path, start)}: "
                                  f"invalid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise SourceError(f"{part.path}: line {_line_number(part.path, start)}: JSON nested "
                                  "deeper than Python's reader goes (about 1,000 levels)") from None
            records.append(rec)
            offsets.append(start)
            if len(records) == batch_size:
                yield records, _line_where(part.path, offsets)
                records, offsets = [], []
        if records:
            yield records, _line_where(part.path, offsets)


def resolve_columns(label: str, columns: list[str], names) -> list[str]:
    """The columns to read: each required one (else an error naming it), and the optional
    ones (written "name?", e.g. a chat record's tools) that the data has.

    Examples:
        >>> resolve_columns("f", ["messages", "tools?"], ["messages", "id"])
        ['messages']
    """
    if names is None:  # a stream that does not know its columns: read what is asked
        return [c.rstrip("?") for c in columns]
    missing = [c for c in columns if not c.endswith("?") and c not in names]
    if missing:
        raise SourceError(f"{label}: no column {missing[0]!r} (columns: {', '.join(names)}); "
                          "set the field flag")
    return [c.rstrip("?") for c in columns if c.rstrip("?") in names]


def _parquet_batches(part: Part, batch_size: int, columns: list[str]) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(part.path)
    columns = resolve_columns(part.path, columns, pf.schema_arrow.names)
    row0 = sum(pf.metadata.row_group(g).num_rows for g in range(part.start))
    for rb in pf.iter_batches(batch_size=batch_size, row_groups=range(part.start, part.end),
                              columns=columns):
        first = row0
        row0 += rb.num_rows
        yield rb.to_pylist(), (lambda k, first=first: f"{part.path}: row {first + k}")


def _hf_batches(part: Part, batch_size: int, columns: list[str]) -> Iterator[Batch]:
    ds = _hf_dataset(part.path, part.split)
    columns = resolve_columns(part.path, columns, ds.column_names)
    ds = ds.select_columns(columns)
    label = part.path + (f" [{part.split}]" if part.split else "")
    for first in range(part.start, part.end, batch_size):
        cols = ds[first:min(first + batch_size, part.end)]
        rows = [dict(zip(columns, vals)) for vals in zip(*(cols[c] for c in columns))]
        yield rows, (lambda k, first=first: f"{label}: row {first + k}")


def part_batches(part: Part, batch_size: int, columns: list[str]) -> Iterator[Batch]:
    """Batches of records from one part (run inside a worker)."""
    if part.kind == "jsonl":
        return _jsonl_batches(part, batch_size)
    if part.kind == "parquet":
        return _parquet_batches(part, batch_size, columns)
    return _hf_batches(part, batch_size, columns)


# ---------------------------------------------------------------------- streamed inputs
def load_data_loader(path: str) -> Callable:
    """Import a user's `data_loader.py` and return its `data_loader` function."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"--data_loader_path {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"llt_user_loader_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(p.parent.resolve()))  # so it can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - user code: report, don't crash
        raise SourceError(f"--data_loader_path {path}: importing it failed: "
                          f"{type(e).__name__}: {e}") from None
    fn = getattr(module, "data_loader", None)
    if not callable(fn):
        raise SourceError(f"--data_loader_path {path}: defines no data_loader() function")
    return fn


def _iterate_loader(path: str) -> Iterator[tuple[object, str]]:
    fn = load_data_loader(path)
    try:
        it = fn()
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"--data_loader_path {path}: data_loader() raised "
                          f"{type(e).__name__}: {e}") from None
    if isinstance(it, (str, bytes, dict)) or not hasattr(it, "__iter__"):
        raise SourceError(f"--data_loader_path {path}: data_loader() must return a generator "
                          f"(or another iterable) of records, got {type(it).__name__}")
    it, index = iter(it), 0
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001
            raise SourceError(f"--data_loader_path {path}: data_loader() raised after "
                              f"{index} records: {type(e).__name__}: {e}") from None
        yield rec, f"{path}: data_loader() record {index}"
        index += 1


def _iterate_file(kind: str, path: str) -> Iterator[tuple[object, str]]:
    try:
        if kind == "json":
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            for i, rec in enumerate(data):
                yield rec, f"{path}: record {i}"
        else:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")
                for i, rec in enumerate(reader):
                    yield rec, f"{path}: row {i} (line {reader.line_num})"
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise SourceError(f"{path}: JSON nested deeper than Python's reader goes (about 1,000 levels)") from None


def stream_records(inputs: list[tuple[str, str]], data_loader_path: str | None
                   ) -> Iterator[tuple[object, str]]:
    """(record, where) for every streamed input, in order (run in the parent)."""
    if data_loader_path:
        yield from _iterate_loader(data_loader_path)
    for kind, path in inputs:
        if kind in ("json", "csv", "tsv"):
            yield from _iterate_file(kind, path)

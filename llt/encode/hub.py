"""Records from where users keep data: `datasets.load_dataset` (`--dataset`) and fsspec
URLs in `--input_path` (`s3://`, `gs://`, `hf://`, ...).

    llt encode --dataset HuggingFaceFW/fineweb-edu --dataset_config sample-10BT --streaming ...
    llt encode --dataset ./my_dataset_repo ...            # a folder laid out like a Hub repo
    llt encode --dataset json --data_files 'data/*.jsonl.gz' ...
    llt encode --input_path 's3://bucket/corpus/*.parquet' ...   # with s3fs installed

A loaded dataset (`load_dataset` prepares it once, in the parent, into the `datasets`
cache) is cut into contiguous row ranges, one per worker, each worker opening the cached
dataset itself. A streamed one (`--streaming`: an `IterableDataset`, nothing prepared) is
split between the workers by the dataset's own shards (its files), contiguous, so worker
order is record order. A URL is read as `load_dataset(<json|parquet|csv>, data_files=URL)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from llt.encode.sources import Batch, Part, SourceError, resolve_columns

URL_BUILDERS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".gz": "json",
                ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


@dataclass(frozen=True)
class DatasetSpec:
    """What `datasets.load_dataset` is called with, and how errors name it."""

    path: str
    name: str | None = None  # --dataset_config
    split: str = "train"
    revision: str | None = None
    data_files: tuple = ()
    streaming: bool = False
    options: dict = field(default_factory=dict)  # builder keywords (the csv separator)

    @property
    def label(self) -> str:
        files = f" ({', '.join(self.data_files)})" if self.data_files else ""
        config = f" {self.name}" if self.name else ""
        return f"--dataset {self.path}{config}{files} [{self.split}]"

    def load(self):
        import datasets

        try:
            return datasets.load_dataset(self.path, self.name, split=self.split, revision=self.revision,
                                         data_files=list(self.data_files) or None, streaming=self.streaming,
                                         **self.options)
        except ValueError as e:
            if "split" in str(e).lower():
                raise SourceError(f"{self.label}: no split {self.split!r}; available: "
                                  f"{', '.join(self.split_names())} (choose with --split)") from None
            raise SourceError(f"{self.label}: {e}") from None
        except (FileNotFoundError, ImportError, ConnectionError, OSError) as e:
            raise SourceError(f"{self.label}: cannot be loaded ({type(e).__name__}: {e})") from None

    def split_names(self) -> list[str]:
        import datasets

        try:
            return datasets.get_dataset_split_names(self.path, self.name, data_files=list(self.data_files) or None,
                                                    revision=self.revision, **self.options)
        except Exception:  # noqa: BLE001 - only used to improve a message
            return ["(unknown)"]


def url_protocol(path: str) -> str | None:
    return path.split("://", 1)[0] if "://" in path else None


def check_url(url: str) -> None:
    """Refuse a URL whose filesystem package is missing, naming the package."""
    import fsspec
    from fsspec.registry import known_implementations

    protocol = url_protocol(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        known = known_implementations.get(protocol, {})
        package = known.get("class", "").split(".")[0] or None
        need = f"the {package} package (pip install {package})" if package else "an fsspec filesystem"
        raise SourceError(f"--input_path {url}: reading {protocol}:// needs {need} ({e})") from None


def url_spec(url: str, split: str, streaming: bool) -> DatasetSpec:
    """The `load_dataset` call that reads a URL (or glob) of data files."""
    check_url(url)
    suffixes = [s for s in URL_BUILDERS if url.rstrip("*").lower().endswith(s)]
    if not suffixes:
        raise SourceError(f"--input_path {url}: name .jsonl, .json, .parquet, .csv or .tsv files "
                          "in a URL (the file type decides how they are read)")
    options = {"sep": "\t"} if suffixes[0] == ".tsv" else {}
    return DatasetSpec(URL_BUILDERS[suffixes[0]], data_files=(url,), split="train", streaming=streaming,
                       options=options)


def dataset_parts(spec: DatasetSpec, workers: int) -> tuple[list[tuple[Part, float]], list[Part]]:
    """Row-range units to share out by weight (a loaded dataset), or one part per worker
    (a streamed one, at most one per dataset shard)."""
    ds = spec.load()
    if spec.streaming:
        n = max(1, min(workers, getattr(ds, "num_shards", 1)))
        return [], [Part("stream", spec.label, i, n, dataset=spec) for i in range(n)]
    return ([(Part("dataset", spec.label, 0, len(ds), dataset=spec), float(len(ds)))] if len(ds) else []), []


def dataset_batches(part: Part, batch_size: int, columns: list[str]) -> Iterator[Batch]:
    """Batches of a loaded dataset's rows [start, end) or of a stream shard (in a worker)."""
    spec = part.dataset
    ds = spec.load()
    columns = resolve_columns(spec.label, columns, ds.column_names)
    ds = ds.select_columns(columns)
    if part.kind == "stream":
        ds = ds.shard(num_shards=part.end, index=part.start, contiguous=True)
        label = f"{spec.label} shard {part.start + 1}/{part.end}" if part.end > 1 else spec.label
        rows, first = [], 0
        for row in ds:
            rows.append(row)
            if len(rows) == batch_size:
                yield rows, (lambda k, first=first: f"{label}: row {first + k}")
                rows, first = [], first + batch_size
        if rows:
            yield rows, (lambda k, first=first: f"{label}: row {first + k}")
        return
    for first in range(part.start, part.end, batch_size):
        cols = ds[first:min(first + batch_size, part.end)]
        rows = [dict(zip(columns, vals)) for vals in zip(*(cols[c] for c in columns))]
        yield rows, (lambda k, first=first: f"{spec.label}: row {first + k}")

"""The per-corpus manifest, `summary.json` (what was encoded, how, and each file's
checksum), and which corpora and shards a path names.

The encoder writes it last (`llt.encode.summary`), so its presence means the corpus is
complete; `llt verify` checks every shard against it, and the trainer refuses a corpus
folder without it.
"""

from __future__ import annotations

import json
from pathlib import Path

from llt.errors import DataError, LltError

MANIFEST = "summary.json"
MANIFEST_VERSION = 1
PARTIAL_DIR = ".llt-partial"  # where a running encode writes; a corpus with it and no manifest is unfinished


def read_manifest(corpus_dir: Path) -> dict:
    path = Path(corpus_dir) / MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise LltError(f"{corpus_dir}: no {MANIFEST}; this is not a finished llt corpus "
                       "(an interrupted `llt encode` leaves none: run it again)") from None
    except json.JSONDecodeError as e:
        raise LltError(f"{path}: damaged manifest ({e})") from None
    if manifest.get("llt_corpus_version") != MANIFEST_VERSION:
        raise LltError(f"{path}: manifest version {manifest.get('llt_corpus_version')!r}, "
                       f"this llt reads {MANIFEST_VERSION}")
    return manifest


def find_corpora(path: Path) -> list[Path]:
    """Corpus folders (holding summary.json) at or under `path`, sorted."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(MANIFEST))


def find_shards(data_path: str | Path | list) -> list[Path]:
    """Every shard index under `data_path` (a corpus, a folder of corpora, one `.idx`,
    or a list of these), sorted by path so the sample order is the same on every rank.

    Shards of an unfinished encode (a corpus folder with `.llt-partial/` and no
    `summary.json`) are refused: they may be missing samples.
    """
    paths = data_path if isinstance(data_path, (list, tuple)) else [data_path]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix in (".idx", ".bin"):
            found.append(p.with_suffix(".idx"))
            continue
        if not p.is_dir():
            raise DataError(f"--data_path {p}: no such file or folder")
        hits = sorted(q for q in p.rglob("*.idx") if PARTIAL_DIR not in q.parts)
        if not hits:
            raise DataError(f"--data_path {p}: no .idx/.bin shards under it; "
                            "make them with `llt encode`")
        for q in hits:
            if (q.parent / PARTIAL_DIR).exists() and not (q.parent / MANIFEST).exists():
                raise DataError(f"--data_path: {q.parent} is an unfinished encode (no {MANIFEST}); "
                                "re-run the `llt encode` command that made it")
        found += hits
    return sorted(set(found))

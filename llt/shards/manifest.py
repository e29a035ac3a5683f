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
from llt.shards.format import is_count

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
    except UnicodeDecodeError as e:
        raise LltError(f"{path}: damaged manifest (not UTF-8: {e.reason})") from None
    if not isinstance(manifest, dict):
        raise LltError(f"{path}: damaged manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("llt_corpus_version") != MANIFEST_VERSION:
        raise LltError(f"{path}: manifest version {manifest.get('llt_corpus_version')!r}, "
                       f"this llt reads {MANIFEST_VERSION}")
    check_manifest(manifest, path)
    return manifest


_SHARD_FIELDS = {"name": str, "n_samples": int, "n_tokens": int, "bin_bytes": int, "idx_bytes": int,
                 "bin_xxh3_128": str, "idx_xxh3_128": str}


def check_manifest(manifest: dict, path: Path) -> None:
    """The fields `llt verify` and the trainer read, with the types they need; an error
    names the field (a damaged summary.json must not end in a traceback)."""
    def bad(what: str):
        raise LltError(f"{path}: damaged manifest: {what}")

    if not isinstance(manifest.get("corpus_name"), str):
        bad(f"corpus_name {manifest.get('corpus_name')!r} is not a string")
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict) or not is_count(tok.get("vocab_size")) or not isinstance(
            tok.get("fingerprint"), (str, type(None))):
        bad(f"tokenizer {tok!r} needs a vocab_size count and a fingerprint string")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        bad(f"shards {shards!r} is not a list")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            bad(f"shards[{i}] is not an object")
        for field, kind in _SHARD_FIELDS.items():
            value = entry.get(field)
            if not (isinstance(value, kind) and (kind is str or is_count(value))):
                bad(f"shards[{i}].{field} is {value!r}")
        if "/" in entry["name"] or entry["name"].startswith("."):
            bad(f"shards[{i}].name {entry['name']!r} is not a file name in the corpus folder")



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

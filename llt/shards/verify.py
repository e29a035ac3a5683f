"""`llt verify`: check that shards can be trusted before anything trains on them.

    llt verify out/                      # every corpus under out/: exit 1 on any problem
    llt verify out/wiki/wiki_3.idx       # one shard

Sizes and xxh3 checksums against `summary.json`, headers, offsets, and every id below the
vocabulary. `verify_corpora` is the same check for the trainer's start-up.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llt.errors import LltError
from llt.shards.format import ShardFormatError, file_xxh3, shard_file, shard_stem
from llt.shards.manifest import MANIFEST, find_corpora, find_shards, read_manifest
from llt.shards.reader import ShardReader

_CHUNK = 1 << 24  # tokens per step when scanning a .bin (a view of the map: nothing copied)
_SAMPLES = 1 << 18  # samples per step when checking the index arrays: ~15 MB of temporaries


@dataclass
class Target:
    """What one `inspect`/`verify` run looks at: a whole corpus, or one shard of it."""

    label: Path
    manifest: dict | None  # None for a lone shard outside any finished corpus
    stems: list[Path]  # shard paths without suffix


def targets(path: Path) -> list[Target]:
    if path.suffix in (".bin", ".idx") and path.is_file():
        corpus = path.parent
        manifest = read_manifest(corpus) if (corpus / MANIFEST).is_file() else None
        return [Target(shard_stem(path), manifest, [shard_stem(path)])]
    corpora = find_corpora(path)
    if not corpora:
        raise LltError(f"{path}: no llt corpus (no summary.json at or under it) and not a "
                       ".bin/.idx shard")
    out = []
    for corpus in corpora:
        manifest = read_manifest(corpus)
        out.append(Target(corpus, manifest, [corpus / s["name"] for s in manifest["shards"]]))
    return out


def check_shard(r: ShardReader, vocab_size: int | None = None) -> list[str]:
    """Structural and id-range checks of one shard; returns the problems found. Reads the
    arrays in blocks of samples, so memory stays flat whatever the shard's size."""
    problems = []
    name = r.idx_path.name
    n = len(r)
    arrays = [(kind, r.array(o), r.array(v), 2 if v == "spans" else 1)
              for kind, o, v in (("document", "doc_offsets", "doc_starts"), ("loss span", "span_offsets", "spans"))
              if o in r.header["arrays"]]
    for kind, offs, vals, width in arrays:
        if len(offs) != n + 1 or int(offs[-1]) * width != len(vals):
            problems.append(f"{name}: {kind} offsets are inconsistent")
    if problems:
        return problems
    found: dict[str, str] = {}
    for lo in range(0, n, _SAMPLES):
        hi = min(lo + _SAMPLES, n)
        lengths = np.diff(r.sample_offsets[lo:hi + 1].astype(np.int64))
        if "offsets" not in found and np.any(lengths < 0):
            found["offsets"] = f"{name}: sample offsets go backwards (sample {lo + int(np.argmax(lengths < 0))})"
        for kind, offs, vals, width in arrays:
            if kind in found:
                continue
            block = offs[lo:hi + 1].astype(np.int64)
            counts = np.diff(block)
            if np.any(counts < 0):
                found[kind] = f"{name}: {kind} offsets are inconsistent"
                continue
            owner = np.repeat(np.arange(hi - lo), counts)
            v = vals[block[0] * width:block[-1] * width].astype(np.int64)
            if width == 2:
                v = v.reshape(-1, 2)
                bad = (v[:, 0] >= v[:, 1]) | (v[:, 1] > lengths[owner])
            else:
                bad = v >= np.maximum(lengths[owner], 1)
            if bad.any():
                found[kind] = (f"{name}: {kind}(s) outside their sample, first in sample "
                               f"{lo + int(owner[np.argmax(bad)])}")
    problems += found.values()
    if r.header.get("encode_type") in ("preference", "kto") and not problems:
        problems += _pair_problems(r, name, kto=r.header["encode_type"] == "kto")
    limit = vocab_size or r.vocab_size
    tokens = r.token_array
    for lo in range(0, len(tokens), _CHUNK):
        chunk = tokens[lo:lo + _CHUNK]
        if len(chunk) and int(chunk.max()) >= limit:
            pos = lo + int(np.argmax(chunk >= limit))
            sample = int(np.searchsorted(r.sample_offsets, pos, side="right") - 1)
            problems.append(f"{r.bin_path.name}: token id {int(tokens[pos])} at position {pos:,} "
                            f"(sample {sample}) is not below the vocabulary size {limit:,}")
            break
    return problems


def _pair_problems(r: ShardReader, name: str, kto: bool = False) -> list[str]:
    """Preference shards: each sample holds whole pairs (an even number of documents, chosen
    then rejected) and every document has a trained completion. KTO shards: every document
    has a trained completion and a label of 0 or 1."""
    doc_offs, span_offs = r.array("doc_offsets"), r.array("span_offsets")
    if kto:
        labels = r.array("doc_labels")
        for lo in range(0, len(labels), _CHUNK):
            bad = labels[lo:lo + _CHUNK] > 1
            if bad.any():
                k = lo + int(np.argmax(bad))
                sample = int(np.searchsorted(doc_offs, k, side="right") - 1)
                return [f"{name}: sample {sample}: document label {int(labels[k])} is not 0 or 1"]
    for lo in range(0, len(r), _SAMPLES):
        hi = min(lo + _SAMPLES, len(r))
        d = doc_offs[lo:hi + 1].astype(np.int64)
        counts = np.diff(d)
        if not kto and np.any(counts % 2):
            return [f"{name}: sample {lo + int(np.argmax(counts % 2))} has {int(counts[np.argmax(counts % 2)])} "
                    "documents; a preference sample holds pairs (chosen, rejected)"]
        sp = span_offs[lo:hi + 1].astype(np.int64)
        starts = r.sample_offsets[lo:hi].astype(np.int64)
        docs = starts[np.repeat(np.arange(hi - lo), counts)] + r.array("doc_starts")[d[0]:d[-1]]
        spans = r.array("spans")[sp[0] * 2:sp[-1] * 2].astype(np.int64).reshape(-1, 2)
        spans = starts[np.repeat(np.arange(hi - lo), np.diff(sp))] + spans[:, 0]
        covered = np.zeros(len(docs), bool)
        covered[np.searchsorted(docs, spans, side="right") - 1] = True
        if not covered.all():
            k = int(np.argmin(covered))
            sample = lo + int(np.searchsorted(np.cumsum(counts), k, side="right"))
            side = "an example" if kto else f"a {'rejected' if k % 2 else 'chosen'} side"
            return [f"{name}: sample {sample}: {side} has no trained completion token"]
    return []


def verify_target(target: Target) -> list[str]:
    """Problems in a corpus (or one shard of it) against its manifest."""
    problems = []
    manifest = target.manifest
    entries = {s["name"]: s for s in manifest["shards"]} if manifest else {}
    if manifest and target.label.is_dir():
        name = manifest["corpus_name"]
        for f in sorted(target.label.glob(f"{name}_*.*")):
            if f.suffix in (".bin", ".idx") and f.stem not in entries:
                problems.append(f"{f.name}: on disk but not in summary.json (stray file)")
    for stem in target.stems:
        entry = entries.get(stem.name)
        if manifest and entry is None:
            problems.append(f"{stem.name}: not listed in summary.json")
        for ext in ("bin", "idx"):
            path = shard_file(stem, ext)
            if not path.exists():
                problems.append(f"{path.name}: missing")
            elif entry is not None:
                size = path.stat().st_size
                if size != entry[f"{ext}_bytes"]:
                    problems.append(f"{path.name}: {size:,} bytes, summary.json says {entry[f'{ext}_bytes']:,}")
                elif file_xxh3(path) != entry[f"{ext}_xxh3_128"]:
                    problems.append(f"{path.name}: checksum mismatch (the file changed after encoding)")
        try:
            r = ShardReader(shard_file(stem, "idx"))
        except ShardFormatError as e:
            problems.append(str(e))
            continue
        if manifest:
            if r.header.get("tokenizer_fingerprint") != manifest["tokenizer"]["fingerprint"]:
                problems.append(f"{stem.name}.idx: tokenizer fingerprint differs from summary.json")
            if r.vocab_size != manifest["tokenizer"]["vocab_size"]:
                problems.append(f"{stem.name}.idx: vocabulary size {r.vocab_size:,}, summary.json says "
                                f"{manifest['tokenizer']['vocab_size']:,}")
            if entry and (r.n_samples, r.n_tokens) != (entry["n_samples"], entry["n_tokens"]):
                problems.append(f"{stem.name}.idx: counts differ from summary.json")
        problems += check_shard(r, manifest["tokenizer"]["vocab_size"] if manifest else None)
    return problems


def verify_path(path: str | Path) -> list[str]:
    """Every problem `llt verify PATH` would report, each prefixed with its corpus or shard."""
    return [f"{t.label}: {p}" for t in targets(Path(path)) for p in verify_target(t)]


def verify_corpora(data_paths: list[str]) -> list[str]:
    """Every problem with the shards under `data_paths` (what the trainer reads): each
    finished corpus against its `summary.json`, and lone shards on their own."""
    shards = find_shards(data_paths)
    corpora = sorted({s.parent for s in shards if (s.parent / MANIFEST).is_file()})
    lone = [s for s in shards if s.parent not in corpora]  # no manifest: no checksums to compare
    return [p for target in corpora + lone for p in verify_path(target)]


def verify_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt verify", description="Check every shard of every "
                                 "corpus under PATH (or one .bin/.idx shard): checksums, "
                                 "headers, offsets, id ranges.")
    ap.add_argument("path")
    args = ap.parse_args(argv)
    bad = 0
    for target in targets(Path(args.path)):
        problems = verify_target(target)
        bad += bool(problems)
        status = "OK" if not problems else f"{len(problems)} problem(s)"
        note = "" if target.manifest else " (no summary.json: checksums not checked)"
        print(f"{target.label}: {len(target.stems)} shard{'s' * (len(target.stems) != 1)}, {status}{note}")
        for p in problems:
            print(f"  - {p}")
    return 1 if bad else 0

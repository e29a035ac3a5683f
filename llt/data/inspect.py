"""`llt inspect` and `llt verify`: look at a corpus, and check that it can be trusted.

    llt inspect out/wiki                 # counts, length histogram, 3 decoded samples
    llt inspect out/alpaca -n 5 --random # trained tokens shown [[like this]]
    llt verify out/                      # every corpus under out/: exit 1 on any problem
    llt verify out/wiki/wiki_3.idx       # one shard
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llt.data.format import ShardFormatError, ShardReader, file_xxh3
from llt.data.manifest import MANIFEST, find_corpora, read_manifest
from llt.errors import LltError

_CHUNK = 1 << 24  # tokens per step when scanning a .bin: 64 MB of uint32


@dataclass
class _Target:
    """What one `inspect`/`verify` run looks at: a whole corpus, or one shard of it."""

    label: Path
    manifest: dict | None  # None for a lone shard outside any finished corpus
    stems: list[Path]  # shard paths without suffix


def _targets(path: Path) -> list[_Target]:
    if path.suffix in (".bin", ".idx") and path.is_file():
        corpus = path.parent
        manifest = read_manifest(corpus) if (corpus / MANIFEST).is_file() else None
        return [_Target(path.with_suffix(""), manifest, [path.with_suffix("")])]
    corpora = find_corpora(path)
    if not corpora:
        raise LltError(f"{path}: no llt corpus (no summary.json at or under it) and not a "
                       ".bin/.idx shard")
    out = []
    for corpus in corpora:
        manifest = read_manifest(corpus)
        out.append(_Target(corpus, manifest, [corpus / s["name"] for s in manifest["shards"]]))
    return out


def length_histogram(lengths: np.ndarray, bins: int = 10, width: int = 40) -> str:
    """A text histogram of sample lengths."""
    if not len(lengths):
        return "  (no samples)"
    counts, edges = np.histogram(lengths, bins=bins)
    top = counts.max() or 1
    return "\n".join(
        f"  {int(lo):>7,}-{int(hi):<7,} {c:>9,} {'#' * int(round(width * c / top))}"
        for c, lo, hi in zip(counts, edges[:-1], edges[1:]))


def render_sample(tok, ids: np.ndarray, mask: np.ndarray, docs: np.ndarray, color: bool,
                  show_mask: bool) -> str:
    """Decoded text with trained tokens marked and packed documents separated."""
    on, off = ("\x1b[32m", "\x1b[0m") if color else ("[[", "]]")
    bounds = sorted(set(np.flatnonzero(np.diff(mask.astype(np.int8))) + 1) | set(docs.tolist())
                    | {0, len(ids)})
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo in docs and lo:
            out.append(f"\n----- document starts at token {lo} -----\n")
        text = tok.decode(ids[lo:hi].tolist())
        out.append(f"{on}{text}{off}" if show_mask and mask[lo] else text)
    return "".join(out)


def inspect_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="a corpus folder, a folder holding several, or one .bin/.idx shard")
    ap.add_argument("-n", "--num_samples", type=int, default=3, help="samples to decode")
    ap.add_argument("--random", action="store_true", help="pick samples at random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer_path", help="defaults to the one recorded in summary.json")
    ap.add_argument("--max_tokens", type=int, default=400, help="decode at most this many tokens per sample")
    args = ap.parse_args(argv)
    color = sys.stdout.isatty()
    for target in _targets(Path(args.path)):
        readers = [ShardReader(stem.with_suffix(".idx")) for stem in target.stems]
        lengths = np.concatenate([r.lengths for r in readers]) if readers else np.zeros(0, np.int64)
        first = readers[0].header if readers else {}
        total = int(lengths.sum())
        trained = sum(r.header["n_trained_tokens"] for r in readers)
        print(f"== {target.label}  ({first.get('encode_type')}, {first.get('dtype')}, "
              f"{len(readers)} shard{'s' * (len(readers) != 1)}{', packed' if first.get('packed') else ''})")
        print(f"samples {len(lengths):,}  tokens {total:,}  trained {trained:,} "
              f"({100 * trained / max(total, 1):.1f}%)  length min/mean/max "
              f"{lengths.min() if len(lengths) else 0:,}/{lengths.mean() if len(lengths) else 0:,.1f}/"
              f"{lengths.max() if len(lengths) else 0:,}")
        print("sample lengths:")
        print(length_histogram(lengths))
        if not len(lengths) or args.num_samples <= 0:
            continue
        from llt.data.tokenizer import load_tokenizer, vocab_fingerprint

        tok_path = args.tokenizer_path or (target.manifest and target.manifest["tokenizer"]["path"])
        if not tok_path:
            raise LltError(f"{target.label}: no summary.json beside this shard names its "
                           "tokenizer; pass --tokenizer_path to decode samples")
        tok = load_tokenizer(tok_path)
        if vocab_fingerprint(tok) != first["tokenizer_fingerprint"]:
            print("warning: this tokenizer's vocabulary differs from the one that encoded the "
                  "corpus; the text below may be wrong", file=sys.stderr)
        picks = (np.random.default_rng(args.seed).choice(len(lengths), min(args.num_samples, len(lengths)),
                                                        replace=False)
                 if args.random else np.arange(min(args.num_samples, len(lengths))))
        starts = np.concatenate([[0], np.cumsum([len(r) for r in readers])])
        show_mask = any(r.has_loss_mask for r in readers)
        if show_mask:
            print("trained tokens are shown " + ("in green" if color else "[[like this]]"))
        else:
            print("every token is trained (pretrain)")
        for g in sorted(int(p) for p in picks):
            shard = int(np.searchsorted(starts, g, side="right") - 1)
            r, i = readers[shard], g - int(starts[shard])
            ids, mask, docs = np.asarray(r.tokens(i)), r.loss_mask(i), r.doc_starts(i)
            cut = min(len(ids), args.max_tokens)
            print(f"\n--- sample {g} ({target.stems[shard].name}[{i}]): {len(ids):,} "
                  f"tokens, {int(mask.sum()):,} trained, {len(docs)} document(s)"
                  f"{f'; first {cut}' if cut < len(ids) else ''} ---")
            print(render_sample(tok, ids[:cut], mask[:cut], docs[docs < cut], color, show_mask))
    return 0


# ---------------------------------------------------------------------- verify
def check_shard(r: ShardReader, vocab_size: int | None = None) -> list[str]:
    """Structural and id-range checks of one shard; returns the problems found."""
    problems = []
    name = r.idx_path.name
    n = len(r)
    so = r.sample_offsets
    if n and np.any(np.diff(so.astype(np.int64)) < 0):
        problems.append(f"{name}: sample offsets go backwards")
    lengths = r.lengths
    for kind, off_name, val_name in (("document", "doc_offsets", "doc_starts"),
                                     ("loss span", "span_offsets", "spans")):
        if off_name not in r.header["arrays"]:
            continue
        offs, vals = r.array(off_name).astype(np.int64), r.array(val_name).astype(np.int64)
        width = 2 if val_name == "spans" else 1
        if len(offs) != n + 1 or np.any(np.diff(offs) < 0) or offs[-1] * width != len(vals):
            problems.append(f"{name}: {kind} offsets are inconsistent")
            continue
        owner = np.repeat(np.arange(n), np.diff(offs))
        if val_name == "spans":
            spans = vals.reshape(-1, 2)
            bad = (spans[:, 0] >= spans[:, 1]) | (spans[:, 1] > lengths[owner])
        else:
            bad = vals >= np.maximum(lengths[owner], 1)
        if bad.any():
            problems.append(f"{name}: {int(bad.sum())} {kind}(s) outside their sample, "
                            f"first in sample {int(owner[np.argmax(bad)])}")
    limit = vocab_size or r.vocab_size
    tokens = r.token_array
    for lo in range(0, len(tokens), _CHUNK):
        chunk = tokens[lo:lo + _CHUNK]
        if len(chunk) and int(chunk.max()) >= limit:
            pos = lo + int(np.argmax(chunk >= limit))
            sample = int(np.searchsorted(so, pos, side="right") - 1)
            problems.append(f"{r.bin_path.name}: token id {int(tokens[pos])} at position {pos:,} "
                            f"(sample {sample}) is not below the vocabulary size {limit:,}")
            break
    return problems


def verify_target(target: _Target) -> list[str]:
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
            path = stem.with_suffix(f".{ext}")
            if not path.exists():
                problems.append(f"{path.name}: missing")
            elif entry is not None:
                size = path.stat().st_size
                if size != entry[f"{ext}_bytes"]:
                    problems.append(f"{path.name}: {size:,} bytes, summary.json says {entry[f'{ext}_bytes']:,}")
                elif file_xxh3(path) != entry[f"{ext}_xxh3_128"]:
                    problems.append(f"{path.name}: checksum mismatch (the file changed after encoding)")
        try:
            r = ShardReader(stem.with_suffix(".idx"))
        except ShardFormatError as e:
            problems.append(str(e))
            continue
        if manifest:
            if r.header.get("tokenizer_fingerprint") != manifest["tokenizer"]["fingerprint"]:
                problems.append(f"{stem.name}.idx: tokenizer fingerprint differs from summary.json")
            if entry and (r.n_samples, r.n_tokens) != (entry["n_samples"], entry["n_tokens"]):
                problems.append(f"{stem.name}.idx: counts differ from summary.json")
        problems += check_shard(r, manifest["tokenizer"]["vocab_size"] if manifest else None)
    return problems


def verify_path(path: str | Path) -> list[str]:
    """Every problem `llt verify PATH` would report, each prefixed with its corpus or shard."""
    return [f"{t.label}: {p}" for t in _targets(Path(path)) for p in verify_target(t)]


def verify_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt verify", description="Check every shard of every "
                                 "corpus under PATH (or one .bin/.idx shard): checksums, "
                                 "headers, offsets, id ranges.")
    ap.add_argument("path")
    args = ap.parse_args(argv)
    bad = 0
    for target in _targets(Path(args.path)):
        problems = verify_target(target)
        bad += bool(problems)
        status = "OK" if not problems else f"{len(problems)} problem(s)"
        note = "" if target.manifest else " (no summary.json: checksums not checked)"
        print(f"{target.label}: {len(target.stems)} shard{'s' * (len(target.stems) != 1)}, {status}{note}")
        for p in problems:
            print(f"  - {p}")
    return 1 if bad else 0

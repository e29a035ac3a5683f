"""`llt inspect`: look at a corpus as the model will see it.

    llt inspect out/wiki                 # counts, length histogram, 3 decoded samples
    llt inspect out/alpaca -n 5 --random # trained tokens shown [[like this]]
    llt inspect out/chat --check         # chat turns against the template (llt.encode.chat.check)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from llt.errors import LltError
from llt.shards.format import shard_file
from llt.shards.reader import ShardReader
from llt.shards.verify import Target, targets, verify_target


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
                  show_mask: bool, pairs: bool = False, labels: np.ndarray | None = None) -> str:
    """Decoded text with trained tokens marked and packed documents separated; in a
    preference corpus each document is labelled as the chosen or rejected side of its pair,
    in a KTO corpus as a desirable or undesirable example."""
    on, off = ("\x1b[32m", "\x1b[0m") if color else ("[[", "]]")
    bounds = sorted(set(np.flatnonzero(np.diff(mask.astype(np.int8))) + 1) | set(docs.tolist())
                    | {0, len(ids)})
    starts = docs.tolist()
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo in starts and pairs:
            k = starts.index(lo)
            out.append(f"{chr(10) if lo else ''}----- {'rejected' if k % 2 else 'chosen'} (pair {k // 2 + 1}) -----\n")
        elif lo in starts and labels is not None:
            k = starts.index(lo)
            out.append(f"{chr(10) if lo else ''}----- {'desirable' if labels[k] else 'undesirable'} -----\n")
        elif lo in starts and lo:
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
    ap.add_argument("--check", action="store_true", help=(
        "chat corpora: re-encode a sample of the records and compare each trained turn with the "
        "chat template at generation time (llt inspect PATH --check -n 50 [--input_path FILE])"))
    args = ap.parse_args(argv)
    damaged = 0
    for target in targets(Path(args.path)):
        # A damaged corpus would decode as garbage or fail deep in numpy: say what is wrong.
        problems = verify_target(target)
        if problems:
            damaged += 1
            print(f"== {target.label}: damaged, not shown (`llt verify` checks the rest):")
            print("\n".join(f"  - {p}" for p in problems))
            continue
        readers = [ShardReader(shard_file(stem, "idx")) for stem in target.stems]
        lengths = np.concatenate([r.lengths for r in readers]) if readers else np.zeros(0, np.int64)
        print_counts(target, readers, lengths)
        if len(lengths) and args.num_samples > 0:
            print_samples(target, readers, lengths, args)
    return 1 if damaged else 0


def print_counts(target: Target, readers: list[ShardReader], lengths: np.ndarray) -> None:
    """Counts, trained share, and the length histogram of one corpus or shard."""
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


def print_samples(target: Target, readers: list[ShardReader], lengths: np.ndarray, args) -> None:
    """A few samples decoded, trained tokens marked, packed documents separated."""
    from llt.shards.fingerprint import vocab_fingerprint
    from llt.tokenizer_loader import load_tokenizer

    color = sys.stdout.isatty()
    tok_path = args.tokenizer_path or (target.manifest and target.manifest["tokenizer"]["path"])
    if not tok_path:
        raise LltError(f"{target.label}: no summary.json beside this shard names its "
                       "tokenizer; pass --tokenizer_path to decode samples")
    tok = load_tokenizer(tok_path)
    if vocab_fingerprint(tok) != readers[0].header["tokenizer_fingerprint"]:
        print("warning: this tokenizer's vocabulary differs from the one that encoded the "
              "corpus; the text below may be wrong", file=sys.stderr)
    n = min(args.num_samples, len(lengths))
    picks = (np.random.default_rng(args.seed).choice(len(lengths), n, replace=False)
             if args.random else np.arange(n))
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
        print(render_sample(tok, ids[:cut], mask[:cut], docs[docs < cut], color, show_mask,
                            pairs=r.header.get("encode_type") == "preference",
                            labels=r.doc_labels(i) if r.labelled else None))

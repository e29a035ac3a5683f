"""The end of an encode: its closing figures, the `summary.json` manifest it writes last, and
the summary it prints."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from llt.encode.builders.base import EncodeStats
from llt.encode.tokenizer_info import TokenizerInfo
from llt.fsutil import fsync_dir
from llt.shards.manifest import MANIFEST, MANIFEST_VERSION


def summarize(stats: EncodeStats, seconds: float) -> dict:
    """The closing figures of an encode, as stored and printed."""
    out = asdict(stats)
    out["seconds"] = round(seconds, 3)
    out["tokens_per_second"] = round(stats.tokens / seconds) if seconds > 0 else None
    out["trained_fraction"] = round(stats.trained_tokens / stats.tokens, 6) if stats.tokens else 0.0
    out["packing_efficiency"] = (round(stats.tokens / stats.packed_capacity, 6)
                                 if stats.packed_capacity else None)
    return out


def write_manifest(corpus_dir: Path, *, args: dict, info: TokenizerInfo, dtype: str,
                   stats: EncodeStats, shards: list[dict], seconds: float, chat: dict | None = None) -> dict:
    from llt import __version__

    manifest = {
        "llt_corpus_version": MANIFEST_VERSION,
        "llt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "corpus_name": args["corpus_name"],
        "encode_type": args["encode_type"],
        "max_length": args["max_length"],
        "packed": bool(args["merge_data"]) and args["encode_type"] != "pretrain",
        "dtype": dtype,
        "tokenizer": {
            "path": info.path, "vocab_size": info.vocab_size, "fingerprint": info.fingerprint,
            "eos_token_id": info.eos_id, "prefix_ids": info.prefix_ids,
        },
        "stats": summarize(stats, seconds),
        # chat: the template the corpus was rendered with (its text: a run trained on the
        # corpus saves it with its tokenizer), its keyword arguments and date
        **({"chat": chat} if chat else {}),
        "args": args,
        "shards": shards,
    }
    tmp = corpus_dir / (MANIFEST + ".part")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, corpus_dir / MANIFEST)
    fsync_dir(corpus_dir)
    return manifest


def describe(manifest: dict, corpus_dir: Path) -> str:
    """The closing summary `llt encode` prints.

    Example (wiki_en, Qwen2.5, --max_length 2048, 2 cores)::

        llt encode: wiki -> out/wiki (2 shards, uint32, pretrain)
          records         10,033  skipped empty 0, dropped overlong 0, truncated 0
          samples            522
          tokens       1,067,766  trained 1,067,766 (100.0%)
          time             1.9 s  559,235 tokens/s
    """
    s = manifest["stats"]
    lines = [
        f"llt encode: {manifest['corpus_name']} -> {corpus_dir} "
        f"({len(manifest['shards'])} shard{'s' * (len(manifest['shards']) != 1)}, "
        f"{manifest['dtype']}, {manifest['encode_type']})",
        f"  records  {s['records']:>13,}  skipped empty {s['skipped_empty']:,}, dropped overlong "
        f"{s['dropped_overlong']:,}, truncated {s['truncated']:,}",
        f"  samples  {s['samples']:>13,}",
        f"  tokens   {s['tokens']:>13,}  trained {s['trained_tokens']:,} "
        f"({100 * s['trained_fraction']:.1f}%)",
    ]
    if s.get("dropped_nothing_trained"):
        lines.append(f"  {'':13}    {s['dropped_nothing_trained']:,} of the dropped overlong samples had no trained "
                     f"token in their first {manifest['max_length']:,} tokens (--overlong truncate keeps a "
                     "sample only if some of it is still trained); raise --max_length to keep them")
    if manifest.get("chat"):
        c = manifest["chat"]
        lines.append(f"  chat     template {c['template_file'] or 'of the tokenizer'} "
                     f"(sha256 {c['template_sha256'][:12]}), date {c['date']}, turns: {c['train_turns']}")
        if s.get("turn_samples"):
            lines.append(f"  {'':13}    {s['turn_samples']:,} samples repeat their conversation's history "
                         f"(the template renders it differently once later turns follow): "
                         f"{s['extra_prompt_tokens']:,} extra prompt tokens "
                         f"({100 * s['extra_prompt_tokens'] / max(s['tokens'], 1):.1f}% of the tokens)")
        if s.get("skipped_unrendered"):
            lines.append(f"  {'':13}    {s['skipped_unrendered']:,} conversations skipped: the template "
                         "does not render a part of them (--unrendered skip)")
    if s["packing_efficiency"] is not None:
        lines.append(f"  packing  {100 * s['packing_efficiency']:>12.2f}%  "
                     f"{s['samples_before_packing']:,} samples into {s['samples']:,} bins of "
                     f"{manifest['max_length']:,}")
    lines.append(f"  time     {s['seconds']:>11.1f} s  {s['tokens_per_second'] or 0:,} tokens/s")
    return "\n".join(lines)

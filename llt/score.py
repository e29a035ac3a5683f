"""`llt score MODEL --input_path pairs.jsonl`: a reward model's rewards for preference pairs.

    llt score output/lora-reward-20261204-... --input_path held_out.jsonl
    llt score models/my-rm --data_path out/held_out_pairs --out scores.jsonl

MODEL is a reward model: a run folder or checkpoint of `llt reward`, or an exported (or any
HF) sequence-classification model. Pairs are read from the records `llt encode
--encode_type preference` reads (`--input_path`, with its field and chat-template flags),
encoded by the same encoder into a temporary corpus, or from a corpus already encoded
(`--data_path`). Each side is scored by transformers' own sequence-classification forward,
alone, at its last non-pad token: the reward `llt reward` trained it to give. Prints one
JSON line per pair (chosen, rejected, margin) and a summary: pairs, accuracy (chosen
above rejected), mean margin.

An entry point like `llt.cli`: it joins the encoder (stage encode) to the loaded model
(stage runs), which no stage module may do.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from llt.errors import ConfigError, DataError

ENCODE_FLAGS = ("prompt_field", "chosen_field", "rejected_field", "tools_field", "chat_template",
                "chat_template_kwargs", "max_length", "overlong")


def encode_pairs(tokenizer, inputs: list[str], work: Path, flags: dict) -> Path:
    """The records in `inputs`, encoded as `llt encode --encode_type preference` would for
    this tokenizer, unpacked and in input order (one worker): a corpus under `work`."""
    from llt.encode.config import EncodeArgs
    from llt.encode.job import run_encode

    tokenizer.save_pretrained(str(work / "tokenizer"))
    args = EncodeArgs(tokenizer_path=str(work / "tokenizer"), output_path=str(work), corpus_name="pairs",
                      input_path=inputs, encode_type="preference", num_workers=1,
                      **{k: v for k, v in flags.items() if v is not None})
    run_encode(args, progress_bar=False)
    return work / "pairs"


def read_pairs(corpus: Path) -> list[tuple[list[int], list[int]]]:
    """Every pair of a preference corpus in order: (chosen ids, rejected ids)."""
    from llt.shards.manifest import read_manifest
    from llt.shards.reader import ShardReader

    manifest = read_manifest(corpus)
    if manifest.get("encode_type") != "preference":
        raise DataError(f"--data_path {corpus}: a {manifest.get('encode_type')} corpus; llt score reads "
                        "preference pairs (llt encode --encode_type preference)")
    out = []
    for shard in manifest["shards"]:
        reader = ShardReader(corpus / f"{shard['name']}.idx")
        for i in range(len(reader)):
            ids, starts = reader.tokens(i).tolist(), reader.doc_starts(i).tolist() + [None]
            docs = [ids[a:b] for a, b in zip(starts, starts[1:])]
            out += [(docs[k], docs[k + 1]) for k in range(0, len(docs), 2)]
    return out


@torch.no_grad()
def rewards(model, pad_token_id: int, seqs: list[list[int]], batch_size: int = 8) -> list[float]:
    """Each sequence's reward by the model's own forward, right-padded batches."""
    out = []
    for lo in range(0, len(seqs), batch_size):
        chunk = seqs[lo:lo + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(chunk):
            ids[row, :len(s)], mask[row, :len(s)] = torch.tensor(s), 1
        out += model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, 0].float().tolist()
    return out


def score(model_path: str, inputs: list[str] | None = None, data_path: str | None = None,
          flags: dict | None = None, batch_size: int = 8, dtype: str = "auto") -> dict:
    """{"pairs": [{chosen, rejected, margin}...], "accuracy", "mean_margin", "n"}."""
    from llt.runs.load import load_checkpoint

    if bool(inputs) == bool(data_path):
        raise ConfigError("give --input_path (records) or --data_path (an encoded corpus), one of them")
    loaded = load_checkpoint(model_path, dtype)
    if not loaded.reward:
        raise ConfigError(f"{loaded.checkpoint} is not a reward model (train one with llt reward, "
                          "or pass a *ForSequenceClassification model)")
    model, tok = loaded.model, loaded.tokenizer
    model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None \
        else tok.pad_token_id
    with tempfile.TemporaryDirectory(prefix="llt-score-") as work:
        corpus = Path(data_path) if data_path else encode_pairs(tok, inputs, Path(work), flags or {})
        pairs = read_pairs(corpus)
    if not pairs:
        raise DataError("no pairs to score (every record was empty or too long)")
    flat = rewards(model, model.config.pad_token_id, [s for p in pairs for s in p], batch_size)
    rows = [{"pair": i, "chosen": c, "rejected": r, "margin": c - r}
            for i, (c, r) in enumerate(zip(flat[0::2], flat[1::2]))]
    return {"pairs": rows, "n": len(rows), "accuracy": sum(r["margin"] > 0 for r in rows) / len(rows),
            "mean_margin": sum(r["margin"] for r in rows) / len(rows), "checkpoint": str(loaded.checkpoint)}


def main(argv: list[str]) -> int:
    from llt.flags import OneLineErrors

    class Parser(OneLineErrors, argparse.ArgumentParser):
        pass

    ap = Parser(prog="llt score", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a reward model: run folder, checkpoint, or exported folder")
    ap.add_argument("--input_path", nargs="+", help="preference records (JSONL, JSON, Parquet, CSV)")
    ap.add_argument("--data_path", help="a corpus from llt encode --encode_type preference")
    ap.add_argument("--out", help="write the per-pair lines here instead of stdout")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    for name in ENCODE_FLAGS:
        ap.add_argument(f"--{name}", type=int if name == "max_length" else str, help="as for llt encode")
    a = ap.parse_args(argv)
    got = score(a.model, a.input_path, a.data_path, {k: getattr(a, k) for k in ENCODE_FLAGS}, a.batch_size, a.dtype)
    lines = "".join(json.dumps(r) + "\n" for r in got["pairs"])
    if a.out:
        Path(a.out).write_text(lines)
    else:
        sys.stdout.write(lines)
    print(f"llt score: {got['checkpoint']}: {got['n']} pairs, accuracy {got['accuracy']:.3f} (chosen scored above "
          f"rejected), mean margin {got['mean_margin']:.4f}", file=sys.stderr if not a.out else sys.stdout)
    return 0

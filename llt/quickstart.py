"""`llt quickstart`: the README's first command, offline, in about a minute on 2 CPU cores.

    llt quickstart [--out llt-quickstart]

1. generates a small dataset (documents and q/a pairs), a BPE tokenizer trained on it and
   a tiny randomly initialised Llama (nothing is downloaded);
2. encodes the documents as a `pretrain` corpus and the q/a pairs as a packed `qa` corpus
   with `llt encode`, and verifies both;
3. trains the tiny model on both corpora with `recipes/quickstart_cpu.yaml` (padding-free
   packed batches, resumable checkpoints) until its loss has clearly fallen;
4. prints where the checkpoint, the loss history and the loss plot are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llt.runs.folder import newest_checkpoint, newest_run
from llt.runs.history import read_history
from llt.toy import build_tiny_model, build_tokenizer, toy_records, write_jsonl


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt quickstart", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="llt-quickstart", help="folder for everything it makes")
    ap.add_argument("--records", type=int, default=4000, help="documents and q/a pairs to generate")
    ap.add_argument("--epochs", type=float, default=3, help="training epochs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    docs, qa = toy_records(args.records)
    model_dir = make_assets(out, docs, qa)
    rc = encode_and_verify(out) or train(out, model_dir, args.epochs)
    if rc:
        return rc
    return report(out, question=qa[0]["q"])


def make_assets(out: Path, docs: list[str], qa: list[dict]) -> Path:
    """Step 1: the data as JSONL, a BPE tokenizer trained on it, a tiny random Llama."""
    write_jsonl(out / "data" / "text.jsonl", docs)
    write_jsonl(out / "data" / "qa.jsonl", qa)
    tok = build_tokenizer(docs + [r["q"] + " " + r["a"] for r in qa], out / "tokenizer")
    model_dir = build_tiny_model(out / "tiny-llama", len(tok), hidden=128, layers=4, heads=4)
    tok.save_pretrained(str(model_dir))
    print(f"[1/4] generated {len(docs):,} documents and {len(qa):,} q/a pairs in {out / 'data'}, "
          f"a tokenizer and a tiny Llama in {model_dir}\n")
    return model_dir


def encode_and_verify(out: Path) -> int:
    """Step 2: `llt encode` both corpora, `llt verify` them, `llt inspect` one sample."""
    from llt.cli import main as llt

    common = ["--tokenizer_path", str(out / "tokenizer"), "--output_path", str(out / "shards"),
              "--overwrite"]
    for name, kind, extra in (("text", "pretrain", ["--max_length", "256"]),
                              ("qa", "qa", ["--max_length", "256", "--merge_data"])):
        rc = llt(["encode", "--input_path", str(out / "data" / f"{name}.jsonl"), "--corpus_name", name,
                  "--encode_type", kind, *common, *extra])
        if rc:
            return rc
    print("\n[2/4] checking every shard")
    if llt(["verify", str(out / "shards")]):
        return 1
    llt(["inspect", str(out / "shards" / "qa"), "-n", "1"])
    return 0


def train(out: Path, model_dir: Path, epochs: float) -> int:
    """Step 3: the shipped CPU recipe on both corpora (works from any folder: the recipe
    is found inside the installed package)."""
    from llt.resources import shipped
    from llt.train.sft import main as train_main

    print("\n[3/4] training the tiny model on both corpora (CPU)")
    return train_main([str(shipped("recipes/quickstart_cpu.yaml")), "--model_path", str(model_dir),
                       "--data_path", f"text={out / 'shards' / 'text'}", f"qa={out / 'shards' / 'qa'}",
                       "--output_path", str(out / "runs"), "--max_epochs", str(epochs)])


def report(out: Path, question: str) -> int:
    """Step 4: the losses, where everything is, what to run next, and one answer."""
    from llt.cli import main as llt

    run = newest_run(out / "runs")
    ckpt = newest_checkpoint(run)
    history = read_history(run)
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    print(f"\n[4/4] loss {losses[0]:.2f} -> {losses[-1]:.2f} over {len(losses)} logged steps; "
          f"held-out loss {evals[-1]:.2f}\n"
          f"  run folder   {run}  (config, environment, data, summary, TensorBoard runs/)\n"
          f"  checkpoint   {ckpt}  (AutoModelForCausalLM.from_pretrained loads it; resumable with "
          f"--load_ckpt_path)\n"
          f"  loss plot    {run / 'loss.png'}\n"
          f"next:\n"
          f"  llt generate {run} --raw --prompt \"{question}\"\n"
          f"  llt export {run} --out {out / 'model'}\n"
          f"  llt plot {run} --out {out / 'loss_vs_tokens.png'}\n"
          f"\n$ llt generate {run} --raw --prompt \"{question}\"")
    return llt(["generate", str(run), "--raw", "--max_new_tokens", "12", "--prompt", question])

"""`llt quickstart`: the README's first command, offline, in about two minutes on CPU.

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
import json
from pathlib import Path

from llt.toy import build_tiny_model, build_tokenizer, toy_records, write_jsonl


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt quickstart", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="llt-quickstart", help="folder for everything it makes")
    ap.add_argument("--records", type=int, default=4000, help="documents and q/a pairs to generate")
    ap.add_argument("--epochs", type=float, default=3, help="training epochs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    from llt.cli import main as llt

    docs, qa = toy_records(args.records)
    text_path = write_jsonl(out / "data" / "text.jsonl", docs)
    qa_path = write_jsonl(out / "data" / "qa.jsonl", qa)
    tok = build_tokenizer(docs + [r["q"] + " " + r["a"] for r in qa], out / "tokenizer")
    model_dir = build_tiny_model(out / "tiny-llama", len(tok), hidden=128, layers=4, heads=4)
    tok.save_pretrained(str(model_dir))
    print(f"[1/4] generated {len(docs):,} documents and {len(qa):,} q/a pairs in {out / 'data'}, "
          f"a tokenizer and a tiny Llama in {model_dir}\n")
    common = ["--tokenizer_path", str(out / "tokenizer"), "--output_path", str(out / "shards"),
              "--overwrite"]
    for name, path, kind, extra in (("text", text_path, "pretrain", ["--max_length", "256"]),
                                    ("qa", qa_path, "qa", ["--max_length", "256", "--merge_data"])):
        rc = llt(["encode", "--input_path", str(path), "--corpus_name", name,
                  "--encode_type", kind, *common, *extra])
        if rc:
            return rc
    print("\n[2/4] checking every shard")
    if llt(["verify", str(out / "shards")]):
        return 1
    llt(["inspect", str(out / "shards" / "qa"), "-n", "1"])

    print("\n[3/4] training the tiny model on both corpora (CPU)")
    from llt.train.config import project_path
    from llt.train.sft import main as train

    recipe = project_path("recipes/quickstart_cpu.yaml")
    rc = train([str(recipe), "--model_path", str(model_dir), "--data_path",
                f"text={out / 'shards' / 'text'}", f"qa={out / 'shards' / 'qa'}",
                "--output_path", str(out / "runs"), "--max_epochs", str(args.epochs)])
    if rc:
        return rc
    run = max((p for p in (out / "runs").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    ckpt = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    history = json.loads((run / "loss_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    question = qa[0]["q"]
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

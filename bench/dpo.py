"""Benchmark: LoRA DPO trained tokens/s, llt against TRL's DPOTrainer, CPU.

    python bench/dpo.py                      # SmolLM2-135M-Instruct, 256 alpaca_eval pairs
    python bench/dpo.py --steps 4 --pairs_per_step 4

Model: the real SmolLM2-135M-Instruct (../shared/tools/fetch_smollm2.py). Pairs: the first
`--pairs` alpaca_eval instructions as the prompt (a user message), their output as the chosen
completion and the next record's output as the rejected one, conversational, so both
trainers render them with the model's chat template. Both train LoRA (configs/lora.json)
with DPO (sigmoid, β 0.1), the reference being the model with the adapter disabled, with
the same threads and pairs per optimizer step, each in a fresh subprocess: `--warmup`
untimed steps, then `--steps` timed ones.

* llt: `llt encode --encode_type preference` shards, padding-free batches (each pair's two
  sequences as documents of one flat row), log-probs by llt's chunked loss;
* trl: `DPOTrainer` at its fastest CPU settings: float32 (its bf16 default is slower on
  these CPUs), padded to the batch's longest sequence (`padding_free` is unavailable in TRL
  1.16's DPOTrainer: it warns and pads), its fused LM head.

Trained tokens are completion tokens (chosen and rejected) whose log-probs the loss uses;
time is wall time between the ends of optimizer steps. Prints JSON with both rates, their
ratio, and each child's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train import ALPACA, FETCH, ROOT, StepClock, run_child  # noqa: E402


class PairClock(StepClock):
    """`StepClock` counting completion tokens: llt's labels, or TRL's completion_mask."""

    def add(self, inputs):
        if "completion_mask" in inputs:
            self.pending += int(inputs["completion_mask"][:, 1:].sum())
            self.pending_inputs += int(inputs["attention_mask"].sum())
        else:
            self.pending += int((inputs["labels"] != -100).sum())
            self.pending_inputs += int(inputs["llt_counts"][1])


def pairs(n: int) -> list[dict]:
    rows = [json.loads(line) for line in open(ALPACA)][:n + 1]
    return [{"prompt": [{"role": "user", "content": a["instruction"]}],
             "chosen": [{"role": "assistant", "content": a["output"]}],
             "rejected": [{"role": "assistant", "content": b["output"]}]} for a, b in zip(rows, rows[1:])]


def run_llt(args, steps: int) -> PairClock:
    from llt.train.preference import build_trainer

    argv = ["--model_path", args.model, "--data_path", args.corpus, "--output_path", args.out,
            "--use_lora", "true", "--lora_config_path", str(ROOT / "configs/lora.json"), "--pref_loss", "sigmoid",
            "--beta", "0.1", "--max_steps", str(steps), "--per_device_train_batch_size", str(args.bs),
            "--deepspeed_config_path", "none", "--use_cpu", "--save_final", "false", "--report_to", "none",
            "--disable_tqdm", "true", "--logging_steps", "1", "--learning_rate", "1e-5", "--shuffle_data", "false"]
    trainer = build_trainer(argv)
    clock = PairClock()
    clock.attach(trainer)
    trainer.train()
    return clock


def run_trl(args, steps: int) -> PairClock:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    lora = json.loads((ROOT / "configs/lora.json").read_text())
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32", attn_implementation="sdpa")
    cfg = DPOConfig(output_dir=args.out, max_steps=steps, per_device_train_batch_size=args.bs, loss_type=["sigmoid"],
                    beta=0.1, learning_rate=1e-5, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                    disable_tqdm=True, logging_steps=1, max_length=args.max_length, dataset_num_proc=1)
    trainer = DPOTrainer(model=model, args=cfg, processing_class=tok, train_dataset=Dataset.from_list(pairs(args.pairs)),
                         peft_config=LoraConfig(**lora))
    clock = PairClock()
    clock.attach(trainer)
    trainer.train()
    return clock


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = (run_trl if args.mode == "trl" else run_llt)(args, args.warmup + args.steps)
    out = clock.result(args.warmup)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(out))


def prepare(work: Path, n: int, max_length: int, overlong: str = "truncate") -> tuple[str, str]:
    """The real model's folder and a pair corpus of the first `n` pairs (bench/reward.py too)."""
    import subprocess

    for need in (ALPACA, FETCH):
        if not need.exists():
            sys.exit(f"{Path(sys.argv[0]).name} needs {need} (the ../shared assets folder)")
    model = subprocess.run([sys.executable, str(FETCH)], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    corpus = work / "shards" / "pairs"
    if not (corpus / "summary.json").exists():
        from llt.cli import main as llt
        from llt.toy import write_jsonl

        src = write_jsonl(work / "pairs.jsonl", pairs(n))
        assert llt(["encode", "--input_path", str(src), "--encode_type", "preference", "--tokenizer_path", model,
                    "--output_path", str(work / "shards"), "--corpus_name", "pairs",
                    "--max_length", str(2 * max_length), "--overlong", overlong]) == 0
    return model, str(corpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--pairs_per_step", type=int, default=4)
    ap.add_argument("--max_length", type=int, default=1024, help="per sequence (prompt + completion)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    for name in ("mode", "model", "corpus", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--bs", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-bench-dpo-"))
    model, corpus = prepare(work, args.pairs, args.max_length)
    results = {}
    for mode in ("llt", "trl"):
        cmd = [sys.executable, __file__, "--_child", "--mode", mode, "--model", model, "--corpus", corpus,
               "--out", str(work / "runs" / mode), "--bs", str(args.pairs_per_step), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--pairs", str(args.pairs),
               "--max_length", str(args.max_length)]
        results[mode] = run_child(cmd, args.threads, mode)
        print(mode, results[mode], file=sys.stderr)
    out = {"model": "SmolLM2-135M-Instruct", "pairs": args.pairs, "pairs_per_step": args.pairs_per_step,
           "threads": args.threads, "steps": args.steps, "modes": results,
           "llt_over_trl_trained_tokens_per_second": round(
               results["llt"]["trained_tokens_per_second"] / results["trl"]["trained_tokens_per_second"], 3),
           "target": 1.3}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

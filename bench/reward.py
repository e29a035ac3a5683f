"""Benchmark: LoRA reward-model pairs/s, llt against TRL's RewardTrainer, CPU.

    python bench/reward.py                      # SmolLM2-135M-Instruct, 256 alpaca_eval pairs
    python bench/reward.py --steps 4 --pairs_per_step 8

Model: the real SmolLM2-135M-Instruct (../shared/tools/fetch_smollm2.py) with a new one-label
score head. Pairs: as bench/dpo.py (an alpaca_eval instruction as the user turn, its output
chosen, the next record's output rejected), conversational, rendered by the chat template.
Both train LoRA (configs/lora.json, task SEQ_CLS: the score head trained in full) with the
same threads and pairs per optimizer step, each in a fresh subprocess: `--warmup` untimed
steps, then `--steps` timed ones; pairs longer than `--max_length` a side are left out by both.

* llt: `llt encode --encode_type preference` shards (one pair a sample), padding-free batches
  (each pair's sides as documents of one flat row), the reward read at each side's last token;
* trl: `RewardTrainer` in float32 (its bf16 default is slower on these CPUs), its collator
  padding to the batch's longest sequence, with its default gradient checkpointing (`trl`)
  and, as llt trains, without it (`trl_no_ckpt`: faster, more memory).

Prints JSON with both trainers' pairs (trained examples) per second and their ratio.
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
from dpo import pairs, prepare  # noqa: E402
from train import ROOT, StepClock, run_child  # noqa: E402


class RewardClock(StepClock):
    """`StepClock` that needs no labels (TRL's reward batches have none); pairs per step are
    fixed, so pairs/s is steps x pairs per step over the time."""

    def add(self, inputs):
        self.pending += 1

    def result(self, warmup: int, pairs_per_step: int = 1) -> dict:
        t = self.ends[warmup - 1:] if warmup else self.ends
        secs = t[-1] - t[0]
        n = (len(self.ends) - warmup) * pairs_per_step
        return {"pairs": n, "seconds": round(secs, 2), "pairs_per_second": round(n / secs, 3)}


def _lora() -> dict:
    return {**json.loads((ROOT / "configs/lora.json").read_text()), "task_type": "SEQ_CLS"}


def run_llt(args, steps: int) -> RewardClock:
    from llt.train.reward import build_trainer

    argv = ["--model_path", args.model, "--data_path", args.corpus, "--output_path", args.out,
            "--use_lora", "true", "--lora_config_path", str(ROOT / "configs/lora.json"),
            "--max_steps", str(steps), "--per_device_train_batch_size", str(args.bs),
            "--deepspeed_config_path", "none", "--use_cpu", "--save_final", "false", "--report_to", "none",
            "--disable_tqdm", "true", "--logging_steps", "1", "--learning_rate", "1e-4", "--shuffle_data", "false"]
    trainer = build_trainer(argv)
    clock = RewardClock()
    clock.attach(trainer)
    trainer.train()
    return clock


def run_trl(args, steps: int) -> RewardClock:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype="float32",
                                                               attn_implementation="sdpa")
    cfg = RewardConfig(output_dir=args.out, max_steps=steps, per_device_train_batch_size=args.bs, learning_rate=1e-4,
                       use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
                       logging_steps=1, max_length=args.max_length, dataset_num_proc=1,
                       gradient_checkpointing=args.mode == "trl")
    trainer = RewardTrainer(model=model, args=cfg, processing_class=tok, train_dataset=Dataset.from_list(pairs(args.pairs)),
                            peft_config=LoraConfig(**_lora()))
    clock = RewardClock()
    clock.attach(trainer)
    trainer.train()
    return clock


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = (run_llt if args.mode == "llt" else run_trl)(args, args.warmup + args.steps)
    out = clock.result(args.warmup, args.bs)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--pairs_per_step", type=int, default=8)
    ap.add_argument("--max_length", type=int, default=1024, help="per sequence (prompt + completion)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--modes", nargs="+", default=["llt", "trl", "trl_no_ckpt"])
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    for name in ("mode", "model", "corpus", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--bs", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-bench-reward-"))
    model, corpus = prepare(work, args.pairs, args.max_length, overlong="drop")  # TRL filters long pairs out
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--_child", "--mode", mode, "--model", model, "--corpus", corpus,
               "--out", str(work / "runs" / mode), "--bs", str(args.pairs_per_step), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--pairs", str(args.pairs),
               "--max_length", str(args.max_length)]
        results[mode] = run_child(cmd, args.threads, mode)
        print(mode, results[mode], file=sys.stderr)
    out = {"model": "SmolLM2-135M-Instruct", "pairs": args.pairs, "pairs_per_step": args.pairs_per_step,
           "threads": args.threads, "steps": args.steps, "modes": results,
           "target": 1.3}
    for mode in (m for m in results if m != "llt" and "llt" in results):
        out[f"llt_over_{mode}_pairs_per_second"] = round(
            results["llt"]["pairs_per_second"] / results[mode]["pairs_per_second"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

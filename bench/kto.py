"""Benchmark: LoRA KTO examples/s, llt against TRL's KTOTrainer, CPU.

    python bench/kto.py                      # SmolLM2-135M-Instruct, 256 alpaca_eval examples
    python bench/kto.py --steps 4 --examples_per_step 8

Model: the real SmolLM2-135M-Instruct (../shared/tools/fetch_smollm2.py). Examples: the first
`--examples` alpaca_eval instructions as the prompt (a user message); even records keep
their own output as a desirable completion, odd ones take the next record's output as an
undesirable one; conversational, so both trainers render them with the chat template. Both
train LoRA (configs/lora.json) with the `kto` loss (β 0.1, the KL estimate from mismatched
completions), the reference being the model with the adapter disabled, with the same
threads and examples per optimizer step, each in a fresh subprocess: `--warmup` untimed
steps, then `--steps` timed ones; examples longer than `--max_length` are left out by both.

* llt: `llt encode --encode_type kto` shards, padding-free batches (each example a document
  of one flat row, as are the KL documents), log-probs by llt's chunked loss;
* trl: `KTOTrainer` in float32 (its bf16 default is slower on these CPUs), padded to the
  batch's longest sequence, its fused LM head, with its default gradient checkpointing
  (`trl`) and, as llt trains, without it (`trl_no_ckpt`).

Prints JSON with the trained examples per second of each and llt's ratio to each.
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
from reward import RewardClock  # noqa: E402
from train import ALPACA, FETCH, ROOT, run_child  # noqa: E402


def examples(n: int) -> list[dict]:
    rows = [json.loads(line) for line in open(ALPACA)][:n + 1]
    return [{"prompt": [{"role": "user", "content": a["instruction"]}],
             "completion": [{"role": "assistant", "content": (a if i % 2 == 0 else b)["output"]}],
             "label": i % 2 == 0} for i, (a, b) in enumerate(zip(rows, rows[1:]))]


def run_llt(args, steps: int) -> RewardClock:
    from llt.train.kto import build_trainer

    argv = ["--model_path", args.model, "--data_path", args.corpus, "--output_path", args.out,
            "--use_lora", "true", "--lora_config_path", str(ROOT / "configs/lora.json"), "--beta", "0.1",
            "--max_steps", str(steps), "--per_device_train_batch_size", str(args.bs),
            "--deepspeed_config_path", "none", "--use_cpu", "--save_final", "false", "--report_to", "none",
            "--disable_tqdm", "true", "--logging_steps", "1", "--learning_rate", "1e-5", "--shuffle_data", "false"]
    trainer = build_trainer(argv)
    clock = RewardClock()
    clock.attach(trainer)
    trainer.train()
    return clock


def run_trl(args, steps: int) -> RewardClock:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32", attn_implementation="sdpa")
    cfg = KTOConfig(output_dir=args.out, max_steps=steps, per_device_train_batch_size=args.bs, beta=0.1,
                    learning_rate=1e-5, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                    disable_tqdm=True, logging_steps=1, max_length=args.max_length, dataset_num_proc=1,
                    gradient_checkpointing=args.mode == "trl")
    trainer = KTOTrainer(model=model, args=cfg, processing_class=tok, train_dataset=Dataset.from_list(examples(args.examples)),
                         peft_config=LoraConfig(**json.loads((ROOT / "configs/lora.json").read_text())))
    clock = RewardClock()
    clock.attach(trainer)
    trainer.train()
    return clock


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = (run_llt if args.mode == "llt" else run_trl)(args, args.warmup + args.steps)
    out = clock.result(args.warmup, args.bs)
    out = {"examples": out.pop("pairs"), "seconds": out["seconds"], "examples_per_second": out["pairs_per_second"],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print("RESULT " + json.dumps(out))


def prepare(work: Path, n: int, max_length: int) -> tuple[str, str]:
    """The real model's folder and a KTO corpus of the first `n` examples."""
    import subprocess

    for need in (ALPACA, FETCH):
        if not need.exists():
            sys.exit(f"{Path(sys.argv[0]).name} needs {need} (the ../shared assets folder)")
    model = subprocess.run([sys.executable, str(FETCH)], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    corpus = work / "shards" / "kto"
    if not (corpus / "summary.json").exists():
        from llt.cli import main as llt
        from llt.toy import write_jsonl

        src = write_jsonl(work / "kto.jsonl", examples(n))
        assert llt(["encode", "--input_path", str(src), "--encode_type", "kto", "--tokenizer_path", model,
                    "--output_path", str(work / "shards"), "--corpus_name", "kto",
                    "--max_length", str(max_length)]) == 0
    return model, str(corpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--examples_per_step", type=int, default=8)
    ap.add_argument("--max_length", type=int, default=1024, help="per example (prompt + completion)")
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
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-bench-kto-"))
    model, corpus = prepare(work, args.examples, args.max_length)
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--_child", "--mode", mode, "--model", model, "--corpus", corpus,
               "--out", str(work / "runs" / mode), "--bs", str(args.examples_per_step), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--examples", str(args.examples),
               "--max_length", str(args.max_length)]
        results[mode] = run_child(cmd, args.threads, mode)
        print(mode, results[mode], file=sys.stderr)
    out = {"model": "SmolLM2-135M-Instruct", "examples": args.examples, "examples_per_step": args.examples_per_step,
           "threads": args.threads, "steps": args.steps, "modes": results, "target": 1.3}
    for mode in (m for m in results if m != "llt" and "llt" in results):
        out[f"llt_over_{mode}_examples_per_second"] = round(
            results["llt"]["examples_per_second"] / results[mode]["examples_per_second"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

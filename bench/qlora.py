"""Benchmark: LoRA against QLoRA (and DoRA) on the same model and data, CPU, one run.

    python bench/qlora.py                       # SmolLM2-135M-Instruct, alpaca_eval packed to 1024
    python bench/qlora.py --steps 2 --warmup 1 --modes lora qlora

Model: the real SmolLM2-135M-Instruct (../shared/tools/fetch_smollm2.py); data:
../shared/assets/data/alpaca_eval.jsonl as chat q/a pairs, packed (`llt encode --merge_data`).
Each mode trains in a fresh process with the same threads, batch and LoRA shape (r 16,
all-linear), `--warmup` untimed steps then `--steps` timed ones:

* lora:        the base in fp32, LoRA adapters;
* qlora:       the base's linear layers in 4-bit NF4 with double quantization (bitsandbytes);
* dora:        fp32 base, DoRA adapters (`use_dora`);
* qlora_dora:  4-bit base, DoRA adapters.

Per mode: `weight_mib` (parameters, buffers and 4-bit constants once loaded and
quantized), `base_linear_mib` (the part a 4-bit base quantizes), `peak_rss_mib`
(the process's peak resident memory over the whole run), and trained tokens/s over the
timed steps (`bench/train.py`'s clock). Gradient checkpointing is on by default, as in
`recipes/qlora_sft.yaml` (`--gradient_checkpointing false` to compare without). Ratios are against lora in the same run. On CPU
bitsandbytes dequantizes each 4-bit layer per matmul, so QLoRA is expected to be slower
there; what it buys is the weight memory. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from train import StepClock, prepare_alpaca, run_child  # noqa: E402  (bench/train.py)

MODES = {"lora": ([], False), "qlora": (["--load_in_4bit", "--use_bnb_nested_quant", "true"], False),
         "dora": ([], True), "qlora_dora": (["--load_in_4bit", "--use_bnb_nested_quant", "true"], True)}


def child(args) -> None:
    import torch

    from llt.train.sft import build_trainer

    torch.set_num_threads(args.threads)
    extra, dora = MODES[args.mode]
    cfg = Path(args.out) / "lora.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear",
                               "use_dora": dora, "task_type": "CAUSAL_LM"}))
    argv = ["--model_path", args.model, "--data_path", args.corpus, "--output_path", args.out,
            "--max_steps", str(args.warmup + args.steps), "--per_device_train_batch_size", str(args.bs),
            "--deepspeed_config_path", "none", "--use_cpu", "--save_final", "false", "--report_to", "none",
            "--disable_tqdm", "true", "--logging_steps", "1", "--learning_rate", "1e-4", "--use_lora",
            "--lora_config_path", str(cfg), "--gradient_checkpointing", str(args.gradient_checkpointing).lower(),
            *extra]
    trainer = build_trainer(argv)
    from llt.model.quant import weight_memory
    weight = weight_memory(trainer.model)
    clock = StepClock()
    clock.attach(trainer)
    trainer.train()
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("RESULT " + json.dumps(dict(clock.result(args.warmup), weight_mib=round(weight["weight_bytes"] / 2**20, 1),
                                      base_linear_mib=round(weight["linear_bytes"] / 2**20, 1),
                                      peak_rss_mib=round(peak / 1024, 1))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--bs", type=int, default=2, help="packed rows per micro-batch")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--gradient_checkpointing", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                    help="as recipes/qlora_sft.yaml (default true): activations then weigh less than weights")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    for name in ("mode", "model", "corpus", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-bench-qlora-"))
    model = prepare_alpaca(work, args.max_length, ("packed",), "bench/qlora.py")
    corpus = work / "shards" / "packed"
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--_child", "--mode", mode, "--model", model, "--corpus", str(corpus),
               "--out", str(work / "runs" / mode), "--bs", str(args.bs), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--gradient_checkpointing", str(args.gradient_checkpointing)]
        results[mode] = run_child(cmd, args.threads, mode)
        print(mode, results[mode], file=sys.stderr)
    out = {"model": "SmolLM2-135M-Instruct", "data": "alpaca_eval, packed", "max_length": args.max_length,
           "gradient_checkpointing": args.gradient_checkpointing,
           "micro_batch": args.bs, "threads": args.threads, "steps": args.steps, "modes": results}
    if "lora" in results:
        base = results["lora"]
        for mode, r in results.items():
            if mode != "lora":
                out[f"{mode}_over_lora"] = {
                    "weight_mib": round(r["weight_mib"] / base["weight_mib"], 3),
                    "base_linear_mib": round(r["base_linear_mib"] / base["base_linear_mib"], 3),
                    "peak_rss_mib": round(r["peak_rss_mib"] / base["peak_rss_mib"], 3),
                    "trained_tokens_per_second": round(r["trained_tokens_per_second"]
                                                       / base["trained_tokens_per_second"], 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

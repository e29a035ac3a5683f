"""Benchmark: LoRA GRPO steps/s and its split into generation and training, llt against
TRL's GRPOTrainer, CPU.

    python bench/grpo.py                      # SmolLM2-135M-Instruct, alpaca_eval prompts
    python bench/grpo.py --steps 3 --prompts_per_step 4 --num_generations 4

Model: the real SmolLM2-135M-Instruct (../shared/tools/fetch_smollm2.py). Prompts: the first
alpaca_eval instructions as a user message (conversational: both render them with the chat
template's generation prompt). Both train LoRA (configs/lora.json) with the same G,
`--max_completion_length`, temperature 1, loss dapo, β 0, μ 1, the same completions per
micro-batch and per step, threads and prompts, each in a fresh subprocess, generating with
transformers' `generate` (TRL's `use_vllm` off): `--warmup` untimed steps, then `--steps`
timed ones. A reward function that scores the completion's length keeps the rewards varied.

* generation: seconds inside the generate call (llt's generator, TRL's `_generate_single_turn`);
* training: the rest of the step (scoring, the forward and backward passes, the optimizer);
* per token: both divided by the completion tokens generated, since sampled completions
  end at different lengths in two runs (most run to `--max_completion_length` here).

Modes: `llt` (padding-free micro-batches, the chunked loss at the sampling temperature),
`trl` (its defaults: gradient checkpointing) and `trl_no_ckpt` (without it, as llt trains).
Prints JSON: each mode's figures and llt's ratios to each (target: training >= 1.3x, the
whole step not slower).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train import ALPACA, FETCH, ROOT, run_child  # noqa: E402

REWARD = "def length(completion_ids, **kw):\n    return [len(c) / 64 for c in completion_ids]\n"


class Clock:
    """Per optimizer step: its seconds, the generation seconds in it, the completion tokens."""

    def __init__(self):
        self.steps, self.gen, self.tokens, self._gen, self._tokens, self._t = [], [], [], 0.0, 0, None

    def wrap(self, fn, count):
        def timed(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            self._gen += time.perf_counter() - start
            self._tokens += count(out)
            return out
        return timed

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _C(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if clock._t is None:
                    clock._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                now = time.perf_counter()
                clock.steps.append(now - clock._t)
                clock.gen.append(clock._gen)
                clock.tokens.append(clock._tokens)
                clock._t, clock._gen, clock._tokens = now, 0.0, 0
        return _C()

    def result(self, warmup: int) -> dict:
        s, g, n = (sum(x[warmup:]) for x in (self.steps, self.gen, self.tokens))
        k = len(self.steps) - warmup
        return {"steps": k, "seconds": round(s, 2), "steps_per_second": round(k / s, 4),
                "generation_s_per_step": round(g / k, 3), "training_s_per_step": round((s - g) / k, 3),
                "completion_tokens": n, "generation_ms_per_token": round(1000 * g / n, 3),
                "training_ms_per_token": round(1000 * (s - g) / n, 3)}


def prompts(n: int) -> list[dict]:
    rows = [json.loads(line) for line in open(ALPACA)][:n]
    return [{"prompt": [{"role": "user", "content": r["instruction"]}]} for r in rows]


def run_llt(args, steps: int, clock: Clock):
    from llt.train.grpo import build_trainer

    ga = args.prompts_per_step * args.num_generations // args.bs
    argv = ["--model_path", args.model, "--input_path", args.prompts_file, "--output_path", args.out,
            "--reward_funcs", f"{args.rewards_file}:length", "--use_lora", "true",
            "--lora_config_path", str(ROOT / "configs/lora.json"), "--max_steps", str(steps),
            "--num_generations", str(args.num_generations), "--per_device_train_batch_size", str(args.bs),
            "--gradient_accumulation_steps", str(ga), "--max_completion_length", str(args.max_completion_length),
            "--max_prompt_length", "2048", "--deepspeed_config_path", "none", "--use_cpu", "--save_final", "false",
            "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1", "--learning_rate", "1e-5",
            "--shuffle_data", "false", "--log_completions_steps", "0"]
    trainer = build_trainer(argv)
    trainer.add_callback(clock.callback())
    trainer.generator.generate = clock.wrap(trainer.generator.generate, lambda out: sum(map(len, out)))
    trainer.train()


def run_trl(args, steps: int, clock: Clock):
    import importlib.util

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    spec = importlib.util.spec_from_file_location("bench_rewards", args.rewards_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32", attn_implementation="sdpa")
    ga = args.prompts_per_step * args.num_generations // args.bs
    cfg = GRPOConfig(output_dir=args.out, max_steps=steps, per_device_train_batch_size=args.bs,
                     gradient_accumulation_steps=ga, num_generations=args.num_generations,
                     max_completion_length=args.max_completion_length, learning_rate=1e-5, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1, shuffle_dataset=False,
                     gradient_checkpointing=args.mode == "trl", log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[mod.length], args=cfg, processing_class=tok,
                          train_dataset=Dataset.from_list(prompts(args.n_prompts)),
                          peft_config=LoraConfig(**json.loads((ROOT / "configs/lora.json").read_text())))
    trainer.add_callback(clock.callback())
    trainer._generate_single_turn = clock.wrap(trainer._generate_single_turn, lambda out: sum(map(len, out[0])))
    trainer.train()


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = Clock()
    (run_llt if args.mode == "llt" else run_trl)(args, args.warmup + args.steps, clock)
    out = clock.result(args.warmup)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(out))


def prepare(work: Path, n: int) -> tuple[str, str, str]:
    import subprocess

    for need in (ALPACA, FETCH):
        if not need.exists():
            sys.exit(f"{Path(sys.argv[0]).name} needs {need} (the ../shared assets folder)")
    model = subprocess.run([sys.executable, str(FETCH)], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    work.mkdir(parents=True, exist_ok=True)
    from llt.toy import write_jsonl

    src = write_jsonl(work / "prompts.jsonl", prompts(n))
    rewards = work / "rewards.py"
    rewards.write_text(REWARD)
    return model, str(src), str(rewards)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts_per_step", type=int, default=4)
    ap.add_argument("--num_generations", type=int, default=4)
    ap.add_argument("--completions_per_micro_batch", type=int, default=8, dest="bs")
    ap.add_argument("--max_completion_length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--modes", nargs="+", default=["llt", "trl", "trl_no_ckpt"])
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    for name in ("mode", "model", "prompts_file", "rewards_file", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--n_prompts", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args)
    if (args.prompts_per_step * args.num_generations) % args.bs:
        sys.exit("--completions_per_micro_batch must divide --prompts_per_step x --num_generations")
    n = args.prompts_per_step * (args.steps + args.warmup)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-bench-grpo-"))
    model, prompts_file, rewards_file = prepare(work, n)
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--_child", "--mode", mode, "--model", model, "--prompts_file",
               prompts_file, "--rewards_file", rewards_file, "--out", str(work / "runs" / mode), "--n_prompts", str(n),
               "--completions_per_micro_batch", str(args.bs), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--threads", str(args.threads), "--prompts_per_step", str(args.prompts_per_step),
               "--num_generations", str(args.num_generations), "--max_completion_length",
               str(args.max_completion_length)]
        results[mode] = run_child(cmd, args.threads, mode)
        print(mode, results[mode], file=sys.stderr)
    out = {"model": "SmolLM2-135M-Instruct", "prompts_per_step": args.prompts_per_step,
           "num_generations": args.num_generations, "max_completion_length": args.max_completion_length,
           "threads": args.threads, "steps": args.steps, "modes": results, "target_training": 1.3}
    for mode in (m for m in results if m != "llt" and "llt" in results):
        a, b = results["llt"], results[mode]
        out[f"llt_over_{mode}"] = {
            "steps_per_second": round(a["steps_per_second"] / b["steps_per_second"], 3),
            "training_per_token": round(b["training_ms_per_token"] / a["training_ms_per_token"], 3),
            "generation_per_token": round(b["generation_ms_per_token"] / a["generation_ms_per_token"], 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

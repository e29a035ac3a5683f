"""Benchmark: trained tokens/s of llt's batch layouts against the seed's and TRL's, CPU.

    python bench/train.py                 # SmolLM2-135M-Instruct, alpaca_eval, max_length 1024
    python bench/train.py --steps 4 --warmup 1 --tokens_per_step 4096

Model: the real SmolLM2-135M-Instruct (built by ../shared/tools/fetch_smollm2.py); data:
../shared/assets/data/alpaca_eval.jsonl as chat q/a pairs (loss on the answers only),
encoded once with `llt encode` (packed and unpacked). In the same run, each mode trains
in a fresh subprocess with the same threads and about the same number of real tokens
per optimizer step, for `--warmup` steps that are not timed, then `--steps` timed ones:

* llt_packed:     packed shards, padding-free batches (llt's default);
* llt_dynamic:    unpacked shards, padded to the batch's longest sample;
* seed_pad_max:   unpacked shards, every sample padded to max_length (the seed's way);
* trl_packing:    TRL SFTTrainer, packing=True (best-fit, padding-free), same micro-batch;
* trl_packing_b1: the same with one packed sequence per micro-batch (TRL flattens a
  micro-batch into one row, which sdpa pays for quadratically; this is TRL's best CPU
  setting, so the ratio is taken against the better of the two).

Trained tokens are answer tokens the loss is computed on. Time is wall time between the
ends of optimizer steps (data loading included). Each mode reports the timed window's
trained and input (non-padding) tokens/s, and `epoch_trained_tokens_per_second`: the
input rate times the trained fraction of the whole epoch as that mode's own collator
batches it. A few timed steps see a few dozen samples, whose trained fraction swings
by +-15% (measured), so the ratios use the epoch figure. Prints JSON with every figure
and the ratios llt_packed / best TRL, / seed_pad_max and / llt_dynamic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ALPACA = SHARED / "assets/data/alpaca_eval.jsonl"
FETCH = SHARED / "tools/fetch_smollm2.py"


class StepClock:
    """A TrainerCallback noting the time each optimizer step ends and the trained tokens
    of the micro-batches before it."""

    def __init__(self):
        self.ends, self.tokens, self.inputs, self.pending, self.pending_inputs = [], [], [], 0, 0
        self.pairs, self.pending_pairs, self.epoch = [], 0, {}

    def add(self, inputs):
        self.pending += int((inputs["labels"] != -100).sum())
        if "llt_counts" in inputs:
            self.pending_inputs += int(inputs["llt_counts"][1])
            self.pending_pairs += int(inputs["llt_counts"][2])
        elif "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            self.pending_inputs += int(mask.sum())
            self.pending_pairs += int((mask.cumsum(-1) * mask).sum())
        else:
            pos = inputs.get("position_ids")
            self.pending_inputs += inputs["input_ids"].numel()
            self.pending_pairs += int((pos + 1).sum()) if pos is not None else 0

    def attach(self, trainer) -> None:
        """Time `trainer`'s optimizer steps and count the tokens of each training batch."""
        trainer.add_callback(self.callback())
        inner = trainer.compute_loss

        def counting(model, inputs, *a, **k):
            if model.training:
                self.add(inputs)
            return inner(model, inputs, *a, **k)
        trainer.compute_loss = counting

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Cb(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                clock.ends.append(time.perf_counter())
                clock.tokens.append(clock.pending)
                clock.inputs.append(clock.pending_inputs)
                clock.pairs.append(clock.pending_pairs)
                clock.pending = clock.pending_inputs = clock.pending_pairs = 0
        return _Cb()

    def epoch_fraction(self, dataset, collator, bs: int) -> None:
        """Trained / input tokens over the whole training set, through the mode's own
        collator: a few timed steps see too few samples to pin this down."""
        trained = real = 0
        for lo in range(0, len(dataset), bs):
            batch = collator([dataset[i] for i in range(lo, min(len(dataset), lo + bs))])
            trained += int((batch["labels"] != -100).sum())
            if "llt_counts" in batch:
                real += int(batch["llt_counts"][1])
            elif "attention_mask" in batch:
                real += int(batch["attention_mask"].sum())
            else:
                real += batch["input_ids"].numel()
        self.epoch = {"epoch_trained_tokens": trained, "epoch_input_tokens": real}

    def result(self, warmup: int) -> dict:
        t = self.ends[warmup - 1:] if warmup else self.ends
        toks, real = sum(self.tokens[warmup:]), sum(self.inputs[warmup:])
        secs = t[-1] - t[0]
        out = {"trained_tokens": toks, "input_tokens": real, "seconds": round(secs, 2),
               "trained_tokens_per_second": round(toks / secs, 1),
               "input_tokens_per_second": round(real / secs, 1)}
        out["attention_pairs"] = sum(self.pairs[warmup:])
        if self.epoch:
            out.update(self.epoch)
            # An epoch at the measured input rate trains all of the epoch's trained tokens.
            out["epoch_trained_tokens_per_second"] = round(
                real / secs * self.epoch["epoch_trained_tokens"] / self.epoch["epoch_input_tokens"], 1)
        return out


def run_llt(mode: str, model: str, corpus: str, out: str, steps: int, bs: int, ga: int) -> dict:
    from llt.train.sft import build_trainer

    padding = {"llt_packed": "free", "llt_dynamic": "longest", "seed_pad_max": "max_length"}[mode]
    argv = ["--model_path", model, "--data_path", corpus, "--output_path", out, "--padding", padding,
            "--max_steps", str(steps), "--per_device_train_batch_size", str(bs),
            "--gradient_accumulation_steps", str(ga), "--deepspeed_config_path", "none", "--use_cpu",
            "--save_final", "false", "--report_to", "none", "--disable_tqdm", "true",
            "--logging_steps", "1", "--learning_rate", "1e-5"]
    trainer = build_trainer(argv)
    clock = StepClock()
    clock.epoch_fraction(trainer.train_dataset, trainer.data_collator, bs)
    clock.attach(trainer)
    trainer.train()
    return clock


def run_trl(mode: str, model: str, out: str, steps: int, bs: int, ga: int, max_length: int) -> StepClock:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in open(ALPACA)]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["instruction"]}],
                             "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
    tok = AutoTokenizer.from_pretrained(model)
    m = AutoModelForCausalLM.from_pretrained(model, dtype="float32", attn_implementation="sdpa")
    cfg = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=bs,
                    gradient_accumulation_steps=ga, packing=True, max_length=max_length,
                    learning_rate=1e-5, use_cpu=True, report_to="none", save_strategy="no",
                    disable_tqdm=True, logging_steps=1, dataset_num_proc=1)
    trainer = SFTTrainer(model=m, args=cfg, train_dataset=ds, processing_class=tok)
    clock = StepClock()
    clock.epoch_fraction(trainer.train_dataset, trainer.data_collator, bs)
    clock.attach(trainer)
    trainer.train()
    return clock


def child(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    steps = args.warmup + args.steps
    if args.mode.startswith("trl"):
        clock = run_trl(args.mode, args.model, args.out, steps, args.bs, args.ga, args.max_length)
    else:
        clock = run_llt(args.mode, args.model, args.corpus, args.out, steps, args.bs, args.ga)
    print("RESULT " + json.dumps(clock.result(args.warmup)))


def prepare_alpaca(work: Path, max_length: int, corpora, script: str) -> str:
    """SmolLM2-135M-Instruct's folder, with alpaca_eval encoded as chat q/a pairs under
    `work/shards/<name>` for each of `corpora` ("packed" and/or "unpacked"), once."""
    for need in (ALPACA, FETCH):
        if not need.exists():
            sys.exit(f"{script} needs {need} (the ../shared assets folder)")
    model = subprocess.run([sys.executable, str(FETCH)], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    from llt.cli import main as llt
    for name in corpora:
        if not (work / "shards" / name / "summary.json").exists():
            rc = llt(["encode", "--input_path", str(ALPACA), "--encode_type", "qa", "--qa_template", "chat",
                      "--q_field", "instruction", "--a_field", "output", "--tokenizer_path", model,
                      "--output_path", str(work / "shards"), "--corpus_name", name,
                      "--max_length", str(max_length), "--overlong", "truncate",
                      *(["--merge_data"] if name == "packed" else [])])
            assert rc == 0
    return model


def run_child(cmd: list[str], threads: int, mode: str) -> dict:
    """Run one mode's child process with `threads` threads; its RESULT line as a dict."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per mode")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--tokens_per_step", type=int, default=4096,
                    help="about this many real tokens per optimizer step in every mode")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--modes", nargs="+", default=["llt_packed", "llt_dynamic", "seed_pad_max",
                                                   "trl_packing", "trl_packing_b1"])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    for name in ("mode", "model", "corpus", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--bs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ga", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-bench-train-"))
    model = prepare_alpaca(work, args.max_length, ("packed", "unpacked"), "bench/train.py")
    from llt.data.dataset import ShardDataset
    ds = ShardDataset(work / "shards" / "unpacked")
    mean_len = ds.n_tokens / len(ds)
    rows = max(1, round(args.tokens_per_step / args.max_length))  # packed rows are ~full
    plan = {"llt_packed": ("packed", rows, 1), "trl_packing": (None, rows, 1),
            "trl_packing_b1": (None, 1, rows),
            "llt_dynamic": ("unpacked", max(1, round(args.tokens_per_step / mean_len)), 1),
            # The seed padded every sample to max_length: same samples per step as dynamic.
            "seed_pad_max": ("unpacked", max(1, round(args.tokens_per_step / mean_len)), 1)}
    results = {}
    if rows == 1 and "trl_packing_b1" in args.modes and "trl_packing" in args.modes:
        args.modes.remove("trl_packing_b1")  # the same thing at one row per step
    for mode in args.modes:
        corpus, bs, ga = plan[mode]
        cmd = [sys.executable, __file__, "--_child", "--mode", mode, "--model", model,
               "--out", str(work / "runs" / mode), "--bs", str(bs), "--ga", str(ga),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--max_length", str(args.max_length)]
        if corpus:
            cmd += ["--corpus", str(work / "shards" / corpus)]
        results[mode] = dict(run_child(cmd, args.threads, mode), micro_batch=bs, grad_accum=ga)
        print(mode, results[mode], file=sys.stderr)
    out = {"model": "SmolLM2-135M-Instruct", "data": "alpaca_eval (805 pairs, chat template)",
           "max_length": args.max_length, "threads": args.threads, "steps": args.steps,
           "modes": results}
    tps = {m: r["epoch_trained_tokens_per_second"] for m, r in results.items()}
    trl = [tps[m] for m in ("trl_packing", "trl_packing_b1") if m in tps]
    if "llt_packed" in tps and trl:
        out["llt_packed_over_best_trl"] = round(tps["llt_packed"] / max(trl), 3)
    if "llt_packed" in tps and "seed_pad_max" in tps:
        out["llt_packed_over_seed_pad_max"] = round(tps["llt_packed"] / tps["seed_pad_max"], 3)
    if "llt_packed" in tps and "llt_dynamic" in tps:
        out["llt_packed_over_dynamic"] = round(tps["llt_packed"] / tps["llt_dynamic"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""The GPU check: llt against a plain HF Trainer with padding, same model and data, one run.

    bash bench/gpu.sh                 # one NVIDIA GPU: Qwen2.5-0.5B-shaped model, 4,096 tokens
    bash bench/gpu.sh --tiny          # CPU, a tiny model and short rows: the same path, end to end

1. Data: the alpaca-like set (../shared/assets/data/alpaca_eval.jsonl, chat q/a) encoded by
   `llt encode` with the Qwen2.5 tokenizer, packed to `--max_length` and unpacked. Without
   ../shared it falls back to llt's generated data and tokenizer (and says so).
2. Model: Qwen2.5-0.5B's shape (24 layers, hidden 896, GQA 14/2, tied embeddings), random
   init, saved once so both runs start from the same weights (`--tiny`: 2 layers, hidden 64).
3. On the device: the logits of each document inside a packed row must match the
   document run alone (bf16 on GPU: max abs error < 0.05; fp32 on CPU: < 1e-4).
4. Each mode trains `--warmup` untimed then `--steps` timed optimizer steps with about
   `--tokens_per_step` real tokens per step, in its own subprocess:
   * llt: `LltTrainer`, packed rows, padding-free (flash-attention varlen when installed,
     else SDPA with a block mask), chunked loss, bf16 where supported;
   * baseline: `transformers.Trainer`, unpacked samples padded to the batch's longest,
     16 per micro-batch with gradient accumulation, same attention implementation, dtype
     and optimizer.
5. Prints JSON: trained and input tokens/s, MFU (6·N·tokens plus attention over documents,
   against the GPU's peak), peak GPU memory, and the llt / baseline ratios.
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
sys.path.insert(0, str(ROOT / "bench"))


def prepare(work: Path, tiny: bool, max_length: int, assets: Path) -> dict:
    """Tokenizer, model and the two corpora; returns their paths."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON alone
        return _prepare(work, tiny, max_length, assets)


def _prepare(work: Path, tiny: bool, max_length: int, assets: Path) -> dict:
    from llt.cli import main as llt

    tok_dir, data = assets / "tokenizers/qwen2.5", assets / "data/alpaca_eval.jsonl"
    fields = ["--q_field", "instruction", "--a_field", "output"]
    if not (tok_dir.exists() and data.exists()):
        from llt.toy import build_tokenizer, toy_records, write_jsonl
        print(f"bench/gpu.py: {assets} absent; using llt's generated q/a data and tokenizer", file=sys.stderr)
        docs, qa = toy_records(3000)
        data = write_jsonl(work / "qa.jsonl", qa)
        tok_dir = work / "tokenizer"
        build_tokenizer(docs + [r["q"] + " " + r["a"] for r in qa], tok_dir)
        fields = []
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        import torch
        torch.manual_seed(0)
        vocab = -(-len(tok) // 128) * 128  # padded like Qwen's 151,936
        shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2) if tiny else
                 dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2))
        cfg = Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=32768,
                          use_cache=False, **shape)
        Qwen2ForCausalLM(cfg).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    for name, extra in (("packed", ["--merge_data"]), ("unpacked", [])):
        if not (work / "shards" / name / "summary.json").exists():
            assert llt(["encode", "--input_path", str(data), "--encode_type", "qa", "--qa_template", "chat",
                        *fields, "--tokenizer_path", str(tok_dir), "--output_path", str(work / "shards"),
                        "--corpus_name", name, "--max_length", str(max_length), "--overlong", "truncate",
                        *extra]) == 0
    return {"model": str(model_dir), "packed": str(work / "shards/packed"),
            "unpacked": str(work / "shards/unpacked")}


def check_logits(paths: dict, tiny: bool) -> dict:
    """Packed-row logits per document against each document alone, on the device."""
    import torch

    from llt.data.collate import PaddingFreeCollator
    from llt.data.dataset import ShardDataset
    from llt.model.loading import pick_attn_implementation
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available() and not tiny
    attn = pick_attn_implementation("auto", use_cpu=not cuda)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    model.to("cuda" if cuda else "cpu").train()
    from llt.model.attention import is_varlen
    flat = is_varlen(attn)
    ds = ShardDataset(paths["packed"])
    batch = PaddingFreeCollator(flat=flat, flash_kwargs=flat)([ds[i] for i in range(min(4, len(ds)))])
    batch.pop("llt_counts")
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    worst, docs = 0.0, 0
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        for r in range(batch["input_ids"].shape[0]):
            pos = batch["position_ids"][r].tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for lo, hi in zip(starts[:-1], starts[1:]):
                alone = model(input_ids=batch["input_ids"][r:r + 1, lo:hi]).logits.float()
                worst = max(worst, (logits[r:r + 1, lo:hi] - alone).abs().max().item())
                docs += 1
    tolerance = 0.05 if dtype == torch.bfloat16 else 1e-4
    return {"attention": attn, "documents_checked": docs, "max_abs_logit_error": worst,
            "tolerance": tolerance, "ok": worst < tolerance}


# LoRA and QLoRA (4-bit NF4, double quantization) on the same base: their weight memory.
QUANT_MODES = {"lora": ["--use_lora", "--lora_config_path", "configs/qlora.json"],
               "qlora": ["--use_lora", "--lora_config_path", "configs/qlora.json", "--load_in_4bit",
                         "--use_bnb_nested_quant", "true"]}


def weight_bytes(model) -> dict:
    """MiB of the model's weights, and of its base linear layers alone (what a 4-bit base
    quantizes; embeddings and norms stay in the training dtype)."""
    from llt.model.quant import weight_memory

    w = weight_memory(model)
    return {"weight_mib": round(w["weight_bytes"] / 2**20, 3), "base_linear_mib": round(w["linear_bytes"] / 2**20, 3)}


def run_mode(mode: str, paths: dict, tiny: bool, steps: int, bs: int, ga: int, out: str) -> dict:
    import torch
    from train import StepClock  # bench/train.py

    from llt.train.callbacks import peak_tflops
    from llt.model.loading import flops_per_token_info

    cuda = torch.cuda.is_available() and not tiny
    common = ["--max_steps", str(steps), "--per_device_train_batch_size", str(bs),
              "--gradient_accumulation_steps", str(ga), "--learning_rate", "1e-5", "--report_to", "none",
              "--disable_tqdm", "true", "--logging_steps", "1", "--deepspeed_config_path", "none",
              "--output_dir", out, "--save_final", "false", "--verify_data", "false"]
    if not cuda:
        common.append("--use_cpu")
    from llt.train.parse import parse_args
    if mode in QUANT_MODES or mode == "llt":
        from llt.train.sft import build_trainer
        trainer = build_trainer(["--model_path", paths["model"], "--data_path", paths["packed"], *common,
                                 *QUANT_MODES.get(mode, [])])
    else:
        from transformers import Trainer

        from llt.data.collate import PaddedCollator
        from llt.data.dataset import ShardDataset
        from llt.model.loading import load_model, load_training_tokenizer, pick_attn_implementation
        model_args, data_args, _, args = parse_args(["--model_path", paths["model"], "--data_path",
                                                     paths["unpacked"], *common])
        tok, _ = load_training_tokenizer(model_args)
        collate = PaddedCollator(tok.pad_token_id)

        def plain(features):  # what a plain HF setup feeds the model
            batch = collate(features)
            batch.pop("llt_counts")
            return batch
        trainer = Trainer(model=load_model(model_args, args, tok, [],
                                                   pick_attn_implementation("auto", args.use_cpu, padded=True)), args=args,
                          train_dataset=ShardDataset(data_args.data_path), data_collator=plain)
    info = flops_per_token_info(trainer.model)
    clock = StepClock()
    clock.attach(trainer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"clock": clock, "info": info, "peak": peak_tflops(), "weights": weight_bytes(trainer.model),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def child(args) -> None:
    paths = json.loads(args.paths)
    res = run_mode(args.mode, paths, args.tiny, args.warmup + args.steps, args.bs, args.ga, args.out)
    r = res["clock"].result(args.warmup)
    info, secs = res["info"], r["seconds"]
    flops = 6 * info["matmul_params"] * r["input_tokens"] + 12 * info["layers"] * info["attn_width"] * r[
        "attention_pairs"]
    r.update(res["weights"])
    r.update(peak_gpu_memory_gb=res["peak_gpu_memory_gb"], micro_batch=args.bs, grad_accum=args.ga,
             achieved_tflops=round(flops / secs / 1e12, 2),
             mfu=round(flops / secs / (res["peak"] * 1e12), 4) if res["peak"] else None)
    print("RESULT " + json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny model, short rows")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10, tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3, tiny 1)")
    ap.add_argument("--max_length", type=int, default=None, help="default 4096, tiny 512")
    ap.add_argument("--tokens_per_step", type=int, default=None, help="default 16384, tiny 1024")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--assets", default=str(SHARED / "assets"),
                    help="folder with tokenizers/qwen2.5 and data/alpaca_eval.jsonl (../shared/assets)")
    for hidden in ("--_child", "--mode", "--paths", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--bs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ga", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    t = args.tiny
    args.steps = args.steps or (2 if t else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if t else 3)
    args.max_length = args.max_length or (512 if t else 4096)
    args.tokens_per_step = args.tokens_per_step or (1024 if t else 16384)
    if args._child:
        return child(args)
    t0 = time.time()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-gpu-"))
    paths = prepare(work, t, args.max_length, Path(args.assets))
    check = check_logits(paths, t)
    print("logit check", check, file=sys.stderr)
    import torch

    from llt.data.dataset import ShardDataset
    mean_len = (lambda ds: ds.n_tokens / len(ds))(ShardDataset(paths["unpacked"]))
    rows = max(1, round(args.tokens_per_step / args.max_length))
    per_micro = 16 if not t else 4
    plan = {"llt": (rows, 1), "baseline": (per_micro, max(1, round(args.tokens_per_step / (per_micro * mean_len))))}
    try:
        import bitsandbytes  # noqa: F401
        plan.update(lora=(rows, 1), qlora=(rows, 1))
    except ImportError:
        print("bitsandbytes not installed: no LoRA/QLoRA figures", file=sys.stderr)
    results = {}
    for mode, (bs, ga) in plan.items():
        cmd = [sys.executable, __file__, "--_child", "1", "--mode", mode, "--paths", json.dumps(paths),
               "--out", str(work / "runs" / mode), "--bs", str(bs), "--ga", str(ga), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--max_length", str(args.max_length)] + (["--tiny"] if t else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}")
        results[mode] = json.loads(line[0][7:])
        print(mode, results[mode], file=sys.stderr)
    cuda = torch.cuda.is_available() and not t
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu",
           "model": "Qwen2.5-0.5B-shaped" if not t else "tiny Qwen2-shaped (2 layers, hidden 64)",
           "max_length": args.max_length, "tokens_per_step": args.tokens_per_step, "steps": args.steps,
           "logit_check": check, "llt": results["llt"], "baseline": results["baseline"],
           "trained_tokens_per_second_ratio": round(results["llt"]["trained_tokens_per_second"]
                                                    / results["baseline"]["trained_tokens_per_second"], 3),
           "input_tokens_per_second_ratio": round(results["llt"]["input_tokens_per_second"]
                                                  / results["baseline"]["input_tokens_per_second"], 3),
           "wall_seconds": round(time.time() - t0, 1)}
    if "qlora" in results:
        lo, q = results["lora"], results["qlora"]
        out.update(lora=lo, qlora=q, qlora_over_lora={
            "weight_mib": round(q["weight_mib"] / lo["weight_mib"], 3),
            "base_linear_mib": round(q["base_linear_mib"] / lo["base_linear_mib"], 3),
            "peak_gpu_memory_gb": round(q["peak_gpu_memory_gb"] / lo["peak_gpu_memory_gb"], 3)
            if lo["peak_gpu_memory_gb"] else None,
            "trained_tokens_per_second": round(q["trained_tokens_per_second"] / lo["trained_tokens_per_second"], 3)})
    print(json.dumps(out, indent=1))
    if not check["ok"]:
        sys.exit("packed and unpacked logits disagree")


if __name__ == "__main__":
    main()

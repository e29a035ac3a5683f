"""What a run folder records besides checkpoints, so a run can be understood and repeated
later: `llt_env.json` (command, library versions, devices, world size), `llt_data.json`
(the corpora, shards, mix and held-out set trained on) and, at the end,
`run_summary.json` (steps, tokens, final and best losses, where the best checkpoint is).
`llt_config.json` (every flag) and `loss_history.json`/`loss.png` are written by
`llt.train.build` and the loss-report callback."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from llt.runs.folder import best_checkpoint, checkpoints

PACKAGES = ("llt", "torch", "transformers", "accelerate", "deepspeed", "peft", "datasets", "numpy",
            "tokenizers", "safetensors", "flash-attn", "liger-kernel", "tensorboard")


def environment(args) -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    devices = []
    if torch.cuda.is_available() and not args.use_cpu:
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "command": [sys.executable] + sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "llt_git_commit": _git_commit(),
        "cuda": torch.version.cuda,
        "devices": devices or ["cpu"],
        "world_size": args.world_size,
        "distributed": str(args.parallel_mode.value if hasattr(args.parallel_mode, "value") else args.parallel_mode),
        "deepspeed_config": args.deepspeed,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
    }


def _git_commit() -> str | None:
    """The llt checkout's commit (and whether it had local changes), when run from one."""
    import llt

    root = Path(llt.__file__).resolve().parent.parent  # a source checkout; a wheel has no .git
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+local-changes" if dirty else "") if head else None


def write_run_report(folder: str | Path, args, data, model=None) -> None:
    """`llt_env.json` and `llt_data.json` in the run folder (rank 0, at start-up)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = environment(args)
    if model is not None:
        env["model_parameters"] = sum(p.numel() for p in model.parameters())
    (folder / "llt_env.json").write_text(json.dumps(env, indent=1, default=str))
    (folder / "llt_data.json").write_text(json.dumps(data.manifest(), indent=1, default=str))


def run_summary(state, run_dir: str | Path) -> dict:
    """The figures a reader looks for first, from the trainer state."""
    history = state.log_history
    train = [e for e in history if "loss" in e]
    evals = [e for e in history if "eval_loss" in e]
    out = {"global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
           "final_loss": train[-1]["loss"] if train else None,
           "tokens_seen": train[-1].get("tokens_seen") if train else None,
           "trained_tokens_seen": train[-1].get("trained_tokens_seen") if train else None,
           "final_eval_loss": evals[-1]["eval_loss"] if evals else None}
    if evals and state.best_global_step:
        # The best as training recorded it (by --metric_for_best_model), the same one
        # `llt export --best` takes.
        at_best = next((e for e in evals if e["step"] == state.best_global_step), {})
        best = best_checkpoint(run_dir)
        out.update(best_metric=state.best_metric, best_eval_loss=at_best.get("eval_loss"),
                   best_eval_step=state.best_global_step, best_checkpoint=str(best) if best else None)
    out["checkpoints"] = [p.name for p in checkpoints(run_dir)]
    return out

"""Starting llt's training processes from tests: one environment, a free port for every
launch (so test runs can go side by side), the launcher commands the docs name, and the
process's log in the assertion message when it fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"sft": ROOT / "recipes" / "sft.py", "dpo": ROOT / "recipes" / "dpo.py",
           "reward": ROOT / "recipes" / "reward.py", "kto": ROOT / "recipes" / "kto.py",
           "grpo": ROOT / "recipes" / "grpo.py"}
HELPER = ROOT / "tests" / "helpers" / "record_samples.py"  # trains like recipes/sft.py, recording samples


def env(**extra: str) -> dict:
    """The test process's environment for a child: llt from this checkout, one thread per
    process (two cores shared by every rank), and no launcher variables inherited."""
    out = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(name, None)
    return out


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for a launcher's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(name: str, script: Path | str = RECIPES["sft"], nproc: int = 1) -> list[str]:
    """The command line that starts `script` under launcher `name` with `nproc` processes:
    python, accelerate (CPU; data parallel with gloo from 2 processes), torchrun, deepspeed."""
    py, script = sys.executable, str(script)
    if name == "python":
        return [py, script]
    if name == "accelerate" and nproc == 1:
        return [py, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", script]
    if name == "accelerate":
        return [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), script]
    if name == "torchrun":
        return [py, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(free_port()), script]
    if name == "deepspeed":
        return [py, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port", str(free_port()),
                script]
    raise ValueError(f"unknown launcher {name!r}")


def run(cmd: list, timeout: int = 600, check: bool = True, cwd: Path | str = ROOT) -> subprocess.CompletedProcess:
    """Run `cmd` to its end; with `check`, a non-zero exit fails the test with its log."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (f"{' '.join(cmd)}\nexited {proc.returncode}\n--- stdout\n"
                                      f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def start(cmd: list, cwd: Path | str = ROOT, **popen) -> subprocess.Popen:
    """Start `cmd` in the background (text pipes unless `popen` says otherwise)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env(), text=True, **popen)

"""`llt launch`: run any launcher so that a preemption signal ends in a saved checkpoint.

    llt launch accelerate launch --num_processes 8 recipes/sft.py --config recipes/lora_sft.yaml ...
    llt launch torchrun --nproc_per_node 8 recipes/sft.py ...

Schedulers stop a job by signalling the process they started (SIGTERM from Slurm or
`kubectl delete pod`, SIGUSR1 from Slurm's `--signal`) and treat its exit as the job's end.
Launchers do not wait for a checkpoint: `accelerate launch` exits at once on SIGTERM while
its worker is still saving (in a container the worker is then killed mid-save); torchrun's
agent dies of SIGUSR1 and leaves its workers running, and kills them 30 s after a SIGTERM.

`llt launch` runs the command, learns which processes train (each registers itself in
`LLT_LAUNCH_DIR` when training starts), and forwards SIGTERM, SIGUSR1 and SIGINT to those
processes only: each saves a resumable checkpoint at the end of its step and exits, and the
launcher then ends normally. It is the process's child subreaper, so a worker orphaned by a
launcher that quit early is still waited for; it exits only once every process it started
has ended. After `--grace_seconds` (default 600) it kills what is left.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (Linux), so it can wait for them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reap() -> bool:
    """Collect exited children; True while any child of this process is still running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def trainers(folder: Path) -> list[int]:
    pids = []
    for f in folder.iterdir():
        if f.name.isdigit() and Path(f"/proc/{f.name}").exists():
            pids.append(int(f.name))
    return pids


def launch(cmd: list[str], grace: float) -> int:
    become_subreaper()
    folder = Path(tempfile.mkdtemp(prefix="llt-launch-"))
    proc = subprocess.Popen(cmd, start_new_session=True, env=dict(os.environ, LLT_LAUNCH_DIR=str(folder)))
    deadline: list[float] = []

    def forward(signum, frame):
        if not deadline:
            deadline.append(time.monotonic() + grace)
        targets = trainers(folder)
        print(f"llt launch: {signal.Signals(signum).name} forwarded to "
              + (f"the training process(es) {targets}" if targets else "the job (training had not started)")
              + f"; waiting up to {grace:.0f} s for them to save and exit", file=sys.stderr, flush=True)
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if not targets:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    rc = None
    try:
        while True:
            if rc is None and proc.poll() is not None:
                rc = proc.returncode
            if rc is not None and not reap():
                break  # the launcher and every orphan of it have ended
            if deadline and time.monotonic() > deadline[0]:
                print(f"llt launch: still running {grace:.0f} s after the signal; killing the job",
                      file=sys.stderr, flush=True)
                for pid in trainers(folder) + [proc.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                deadline.clear()
            time.sleep(0.05)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 128 - rc if rc < 0 else rc


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt launch", description=__doc__.split("\n\n")[0],
                                 usage="llt launch [--grace_seconds S] COMMAND [ARGS...]")
    ap.add_argument("--grace_seconds", type=float, default=600,
                    help="after a signal, how long to wait for the checkpoint before killing the job")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if not args.command:
        ap.error("give the command to run, e.g. accelerate launch recipes/sft.py ...")
    return launch(args.command, args.grace_seconds)

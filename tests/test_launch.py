"""Preemption under every launcher: SIGTERM or SIGUSR1 to what the scheduler started, and
that process exits only once the resumable checkpoint is complete (`llt launch` for the
third-party launchers, which quit at once). Each case launches real processes (~15-30 s)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import logged_losses
from tests.procs import RECIPES, launcher, start
from tests.procs import run as run_proc

STEPS = 60

pytestmark = pytest.mark.slow  # every test here starts launchers


def launchers(name: str) -> list[str]:
    """The command before the training flags, as a user types it under each launcher."""
    if name == "llt train":
        return [sys.executable, "-m", "llt", "train"]
    kind, _, nproc = name.partition(" ")
    return launcher(kind, RECIPES["sft"], int(nproc or 1))


def _flags(model, corpus, out, *extra):
    return ["--model_path", str(model), "--data_path", str(corpus), "--output_dir", str(out), "--use_cpu",
            "--report_to", "none", "--disable_tqdm", "true", "--deepspeed_config_path", "none",
            "--logging_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
            "--seed", "3", "--max_steps", str(STEPS), "--save_steps", "3", *extra]


def _complete(run: Path) -> list[int]:
    """Steps of the checkpoints that can resume: under their final name, with optimizer,
    trainer state and data position."""
    done = []
    for p in run.glob("checkpoint-*"):
        if all((p / f).is_file() for f in ("optimizer.pt", "trainer_state.json", "llt_data_state.json")):
            done.append(int(p.name.split("-")[1]))
    return sorted(done)


def interrupt(cmd: list[str], run: Path, sig: int, whole_group: bool) -> dict:
    """Start `cmd`, signal it once a checkpoint exists, and report what was on disk when it
    exited."""
    proc = start(cmd, start_new_session=True)
    while not _complete(run):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    before = _complete(run)[-1]
    t0 = time.monotonic()
    os.killpg(proc.pid, sig) if whole_group else proc.send_signal(sig)
    out, err = proc.communicate(timeout=600)
    took = time.monotonic() - t0
    at_exit = _complete(run)
    return {"rc": proc.returncode, "seconds": round(took, 2), "before": before, "at_exit": at_exit,
            "out": out, "err": err}


@pytest.mark.parametrize("launcher,sig,whole_group", [
    ("python", signal.SIGTERM, False), ("llt train", signal.SIGUSR1, True),
    ("accelerate 1", signal.SIGTERM, False), ("accelerate 1", signal.SIGTERM, True),
    ("accelerate 2", signal.SIGUSR1, False), ("torchrun", signal.SIGTERM, True),
    ("deepspeed", signal.SIGTERM, False)])
def test_llt_launch_exits_only_after_the_preemption_checkpoint_is_complete(
        tmp_path, tiny_model_dir, toy_corpora, launcher, sig, whole_group):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "llt", "launch", *launchers(launcher),
           *_flags(tiny_model_dir, toy_corpora["qa"], run, "--save_optimizer")]
    r = interrupt(cmd, run, sig, whole_group)
    print(f"{launcher}: {signal.Signals(sig).name} to {'the group' if whole_group else 'llt launch'}: exit after "
          f"{r['seconds']} s, rc {r['rc']}, complete checkpoints at exit {r['at_exit']}")
    assert "stopped by" in r["out"], r["err"][-3000:]
    assert r["rc"] == 0, r["err"][-3000:]
    stopped = r["at_exit"][-1]
    assert r["before"] < stopped < STEPS  # the preemption checkpoint, complete when the launcher exited
    assert not any((run / ".partial").glob("checkpoint-*"))
    if launcher == "python":  # resuming it reproduces the uninterrupted run
        ref = tmp_path / "ref"
        run_proc([*launchers("python"), *_flags(tiny_model_dir, toy_corpora["qa"], ref)])
        run_proc([*launchers("python"), *_flags(tiny_model_dir, toy_corpora["qa"], run, "--load_ckpt_path",
                                                str(run))])
        assert logged_losses(run / f"checkpoint-{STEPS}") == logged_losses(ref / f"checkpoint-{STEPS}")

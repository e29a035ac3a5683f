"""Preemption under every launcher: SIGTERM or SIGUSR1 to what the scheduler started, and
that process exits only once the resumable checkpoint is complete (`llt launch` for the
third-party launchers, which quit at once). Each case launches real processes (~15-30 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import logged_losses

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "sft.py")
STEPS = 60


def launchers(port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "python": [py, RECIPE],
        "llt train": [py, "-m", "llt", "train"],
        "accelerate 1": [py, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", RECIPE],
        "accelerate 2": [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "--main_process_port", str(port), RECIPE],
        "torchrun": [py, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(port), RECIPE],
        "deepspeed": [py, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(port), RECIPE],
    }


def _flags(model, corpus, out, *extra):
    return ["--model_path", str(model), "--data_path", str(corpus), "--output_dir", str(out), "--use_cpu",
            "--report_to", "none", "--disable_tqdm", "true", "--deepspeed_config_path", "none",
            "--logging_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
            "--seed", "3", "--max_steps", str(STEPS), "--save_steps", "3", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


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
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
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
    cmd = [sys.executable, "-m", "llt", "launch", *launchers(29611)[launcher],
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
        subprocess.run([*launchers(0)["python"], *_flags(tiny_model_dir, toy_corpora["qa"], ref)], env=_env(),
                       check=True, capture_output=True, timeout=600)
        subprocess.run([*launchers(0)["python"], *_flags(tiny_model_dir, toy_corpora["qa"], run,
                                                         "--load_ckpt_path", str(run))],
                       env=_env(), check=True, capture_output=True, timeout=600)
        assert logged_losses(run / f"checkpoint-{STEPS}") == logged_losses(ref / f"checkpoint-{STEPS}")

"""Faults during training: kill -9 at random moments, SIGTERM preemption, checkpoint
rotation. Each test compares against an uninterrupted run, bit for bit on CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cmd(model, corpus, out, *extra):
    return [sys.executable, str(ROOT / "recipes" / "sft.py"), "--model_path", str(model),
            "--data_path", str(corpus), "--output_dir", str(out), "--use_cpu", "--report_to", "none",
            "--disable_tqdm", "true", "--deepspeed_config_path", "none", "--logging_steps", "1",
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--seed", "11", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))


def _final(run: Path, step: int):
    from safetensors.torch import load_file

    ckpt = run / f"checkpoint-{step}"
    history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    return load_file(str(ckpt / "model.safetensors")), [(e["step"], e["loss"]) for e in history if "loss" in e]


def _same(a, b):
    (wa, la), (wb, lb) = a, b
    assert la == lb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


STEPS = 24


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path, tiny_model_dir,
                                                                             toy_corpora):
    corpus = toy_corpora["qa"]  # 300 samples, 16 per step: 19 steps an epoch, so this crosses one
    flags = ["--max_steps", str(STEPS), "--save_steps", "1", "--save_optimizer", "--save_total_limit", "3"]
    subprocess.run(_cmd(tiny_model_dir, corpus, tmp_path / "ref", *flags), env=_env(), check=True,
                   capture_output=True)
    ref = _final(tmp_path / "ref", STEPS)

    run, rng, kills = tmp_path / "run", random.Random(0), 0
    for _attempt in range(20):
        done = _steps(run) if run.exists() else []
        resume = ["--load_ckpt_path", str(run)] if done else []
        proc = subprocess.Popen(_cmd(tiny_model_dir, corpus, run, *flags, *resume), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 6:
            # Wait for progress in this attempt, then kill at a random moment: mid-step,
            # mid-save or mid-rotation.
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline:
                if run.exists() and _steps(run) and _steps(run)[-1] > (done[-1] if done else 0):
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                # What is left must never look complete unless it is.
                for ckpt in run.glob("checkpoint-*"):
                    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "llt_data_state.json").is_file()
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        if _steps(run)[-1] == STEPS:
            break
    assert _steps(run)[-1] == STEPS and kills >= 4
    _same(_final(run, STEPS), ref)
    assert len(_steps(run)) == 3  # save_total_limit
    assert not (run / ".partial").exists() or not any((run / ".partial").iterdir())


def test_sigterm_saves_a_resumable_checkpoint_and_resuming_continues_exactly(tmp_path, tiny_model_dir,
                                                                            toy_corpora):
    corpus = toy_corpora["qa"]
    # Weights-only checkpoints otherwise: the preemption checkpoint must be resumable anyway.
    flags = ["--max_steps", str(STEPS), "--save_steps", "4"]
    subprocess.run(_cmd(tiny_model_dir, corpus, tmp_path / "ref", *flags), env=_env(), check=True,
                   capture_output=True)
    ref = _final(tmp_path / "ref", STEPS)

    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tiny_model_dir, corpus, run, *flags), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run.exists() and _steps(run)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by signal" in out and "--load_ckpt_path" in out
    stopped = _steps(run)[-1]
    assert 4 <= stopped < STEPS
    ckpt = run / f"checkpoint-{stopped}"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "llt_data_state.json").is_file()
    subprocess.run(_cmd(tiny_model_dir, corpus, run, *flags, "--load_ckpt_path", str(run)), env=_env(),
                   check=True, capture_output=True)
    _same(_final(run, STEPS), ref)


def test_an_interrupted_save_is_never_loaded(tmp_path, tiny_model_dir, toy_corpora):
    from llt.train.config import ConfigError
    from llt.train.trainer import newest_checkpoint

    run = tmp_path / "run"
    subprocess.run(_cmd(tiny_model_dir, toy_corpora["qa"], run, "--max_steps", "2", "--save_steps", "1",
                        "--save_optimizer"), env=_env(), check=True, capture_output=True)
    # A save killed half-way: its files sit in the staging folder under the next step's name.
    staged = run / ".partial" / "checkpoint-3"
    staged.mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"half")
    assert newest_checkpoint(run) == run / "checkpoint-2"
    with pytest.raises(ConfigError, match="unfinished checkpoint"):
        newest_checkpoint(staged)

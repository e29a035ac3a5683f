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

from tests.procs import HELPER, RECIPES, launcher, start
from tests.procs import run as launch


def _cmd(model, corpus, out, *extra, record=None):
    script = [str(HELPER), str(record)] if record else [str(RECIPES["sft"])]
    return [sys.executable, *script, "--model_path", str(model),
            "--data_path", str(corpus), "--output_dir", str(out), "--use_cpu", "--report_to", "none",
            "--disable_tqdm", "true", "--deepspeed_config_path", "none", "--logging_steps", "1",
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--seed", "11", *extra]


def _steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))


def _final(run: Path, step: int):
    from safetensors.torch import load_file

    ckpt = run / f"checkpoint-{step}"
    history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    return load_file(str(ckpt / "model.safetensors")), [(e["step"], e["loss"]) for e in history if "loss" in e]


def _fetched(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _same(a, b):
    (wa, la), (wb, lb) = a, b
    assert la == lb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


STEPS = 24


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path, tiny_model_dir,
                                                                             toy_corpora):
    corpus = toy_corpora["qa"]  # 300 samples, 16 per step: 19 steps an epoch, so this crosses one
    flags = ["--max_steps", str(STEPS), "--save_steps", "1", "--save_optimizer", "--save_total_limit", "3"]
    def fetched_by(lo, hi):  # samples fetched by steps lo+1..hi: 16 a step, 12 for an epoch's last
        return sum(16 if (k - 1) % 19 < 18 else 12 for k in range(lo + 1, hi + 1))
    launch(_cmd(tiny_model_dir, corpus, tmp_path / "ref", *flags, record=tmp_path / "ref-seen"))
    ref = _final(tmp_path / "ref", STEPS)
    ref_seen = _fetched(tmp_path / "ref-seen.rank0.log")[:fetched_by(0, STEPS)]

    run, rng, kills, starts = tmp_path / "run", random.Random(0), 0, []
    for attempt in range(20):
        done = _steps(run) if run.exists() else []
        starts.append(done[-1] if done else 0)
        resume = ["--load_ckpt_path", str(run)] if done else []
        proc = start(_cmd(tiny_model_dir, corpus, run, *flags, *resume, record=tmp_path / f"seen-{attempt}"),
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 6:
            # Wait for progress in this attempt, then kill at a random moment: mid-step,
            # mid-save or mid-rotation.
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline:
                if run.exists() and _steps(run) and _steps(run)[-1] > (done[-1] if done else 0):
                    break
                time.sleep(0.02)
            # The first attempt dies at once after its first checkpoint (STEPS are far off:
            # a kill is certain); later ones at a random moment, which may come too late if
            # the attempt reaches the end first: then it must have ended cleanly.
            time.sleep(rng.uniform(0, 0.6) if kills else 0)
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
    # Guaranteed whatever the timing: at least the first kill, and the end equal to the
    # uninterrupted run (how many of the later kills land depends on the machine's speed).
    assert _steps(run)[-1] == STEPS and kills >= 1
    _same(_final(run, STEPS), ref)
    # The samples trained, attempt by attempt: each attempt's fetches up to the step the
    # next one resumed from (later fetches were look-ahead or lost with the kill).
    ends = starts[1:] + [STEPS]
    trained = []
    for attempt, (lo, hi) in enumerate(zip(starts, ends)):
        trained += _fetched(tmp_path / f"seen-{attempt}.rank0.log")[:fetched_by(lo, hi)]
    assert trained == ref_seen  # same samples, same order
    assert sorted(trained[:300]) == list(range(300))  # epoch 0: every sample once
    assert len(_steps(run)) == 3  # save_total_limit
    assert not (run / ".partial").exists() or not any((run / ".partial").iterdir())


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_resuming_continues_exactly(tmp_path, tiny_model_dir,
                                                                            toy_corpora):
    corpus = toy_corpora["qa"]
    # Weights-only checkpoints otherwise: the preemption checkpoint must be resumable anyway.
    flags = ["--max_steps", str(STEPS), "--save_steps", "4"]
    launch(_cmd(tiny_model_dir, corpus, tmp_path / "ref", *flags))
    ref = _final(tmp_path / "ref", STEPS)

    run = tmp_path / "run"
    proc = start(_cmd(tiny_model_dir, corpus, run, *flags),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (run.exists() and _steps(run)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out and "--load_ckpt_path" in out
    stopped = _steps(run)[-1]
    assert 4 <= stopped < STEPS
    ckpt = run / f"checkpoint-{stopped}"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "llt_data_state.json").is_file()
    launch(_cmd(tiny_model_dir, corpus, run, *flags, "--load_ckpt_path", str(run)))
    _same(_final(run, STEPS), ref)


@pytest.mark.slow
def test_an_interrupted_save_is_never_loaded(tmp_path, tiny_model_dir, toy_corpora):
    from llt.errors import CheckpointError
    from llt.runs.folder import newest_checkpoint

    run = tmp_path / "run"
    launch(_cmd(tiny_model_dir, toy_corpora["qa"], run, "--max_steps", "2", "--save_steps", "1",
                        "--save_optimizer"))
    # A save killed half-way: its files sit in the staging folder under the next step's name.
    staged = run / ".partial" / "checkpoint-3"
    staged.mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"half")
    assert newest_checkpoint(run) == run / "checkpoint-2"
    with pytest.raises(CheckpointError, match="unfinished checkpoint"):
        newest_checkpoint(staged)


def _ddp(model, corpus, out, *extra):
    return [*launcher("accelerate", RECIPES["sft"], 2), *_cmd(model, corpus, out, *extra)[2:]]


DDP_STEPS = 12


@pytest.mark.slow
def test_two_process_run_preempted_on_one_rank_and_killed_resumes_exactly(tmp_path, tiny_model_dir,
                                                                          toy_corpora):
    """Data parallel over 2 processes: SIGUSR1 to rank 1 alone stops both ranks at the same
    step with one resumable checkpoint; a kill -9 of the whole job later is resumed too;
    the end result equals an uninterrupted 2-process run bit for bit."""
    import psutil

    corpus = toy_corpora["qa"]
    flags = ["--max_steps", str(DDP_STEPS), "--save_steps", "1", "--save_optimizer"]
    launch(_ddp(tiny_model_dir, corpus, tmp_path / "ref", *flags))
    ref = _final(tmp_path / "ref", DDP_STEPS)

    run = tmp_path / "run"
    proc = start(_ddp(tiny_model_dir, corpus, run, *flags),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    while not (run.exists() and _steps(run)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "sft.py" in " ".join(p.cmdline())
               and "accelerate" not in " ".join(p.cmdline())]
    assert len(workers) == 2
    rank1 = next(w for w in workers if w.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGUSR1)  # the other preemption signal; SIGTERM is tested above
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by" in out  # rank 0 prints; it learnt of SIGUSR1 from rank 1
    stopped = _steps(run)[-1]
    assert stopped < DDP_STEPS

    # Resume, and kill the whole job (launcher and both workers) once it has made progress.
    proc = start(_ddp(tiny_model_dir, corpus, run, *flags, "--load_ckpt_path", str(run)),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and _steps(run)[-1] <= stopped:
        time.sleep(0.02)
    time.sleep(random.Random(1).uniform(0, 0.3))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _steps(run)[-1] < DDP_STEPS or proc.returncode == 0
    launch(_ddp(tiny_model_dir, corpus, run, *flags, "--load_ckpt_path", str(run)))
    _same(_final(run, DDP_STEPS), ref)


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "vocab"])
def test_damaged_shards_stop_training_before_the_first_step(tmp_path, tiny_model_dir, tiny_tok_dir, damage,
                                                          capsys):
    import shutil

    from llt.toy import toy_records, write_jsonl
    from tests.conftest import encode, train

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "t.jsonl", toy_records(50)[0])],
                       encode_type="pretrain", max_length=64)
    shard = corpus / "c_0"
    data = bytearray(shard.with_suffix(".bin").read_bytes())
    if damage == "truncate":
        shard.with_suffix(".bin").write_bytes(bytes(data[:-2]))
    elif damage == "flip":
        data[10] ^= 0x01
        shard.with_suffix(".bin").write_bytes(bytes(data))
    elif damage == "header":
        idx = bytearray(shard.with_suffix(".idx").read_bytes())
        idx[20:24] = b"}}}}"
        shard.with_suffix(".idx").write_bytes(bytes(idx))
    else:  # an id past the vocabulary, written as a consistent shard by a buggy tool
        data[0:2] = (60000).to_bytes(2, "little")
        shard.with_suffix(".bin").write_bytes(bytes(data))
    rc = train(["--model_path", str(tiny_model_dir), "--data_path", str(corpus), "--output_path",
                str(tmp_path / "out"), "--max_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "c_0" in err, err
    assert {"truncate": "bytes", "flip": "checksum", "header": "header", "vocab": "not below the vocabulary"}[
        damage] in err
    assert not any((tmp_path / "out").glob("*/checkpoint-*"))
    shutil.rmtree(corpus)


def test_shards_that_do_not_fit_the_model_stop_before_the_first_step(tmp_path, tiny_model_dir, capsys):
    from llt.toy import build_tiny_model, build_tokenizer, toy_records, write_jsonl
    from tests.conftest import encode, train

    docs = toy_records(60)[0]
    build_tokenizer(docs, tmp_path / "tok300", vocab_size=300)
    _, other = encode(tmp_path, tmp_path / "tok300", [write_jsonl(tmp_path / "t.jsonl", docs)],
                      corpus_name="other", encode_type="pretrain", max_length=64)
    assert train(["--model_path", str(tiny_model_dir), "--data_path", str(other), "--output_path",
                  str(tmp_path / "o1"), "--max_steps", "1"]) == 2
    assert "encoded with a different tokenizer" in capsys.readouterr().err
    small = build_tiny_model(tmp_path / "small", vocab_size=200)
    assert train(["--model_path", str(small), "--tokenizer_path", str(tmp_path / "tok300"), "--data_path",
                  str(other), "--output_path", str(tmp_path / "o2"), "--max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "300-token vocabulary" in err and "200 embedding rows" in err


def test_the_trash_of_a_rotation_killed_mid_delete_is_cleared_by_the_next_save(tmp_path):
    """A kill between rotation's rename and its delete leaves `.partial/deleting-checkpoint-N`
    (seen once in CI's kill -9 test): the next save clears it."""
    from llt.train.checkpointing import clear_staging, publish, staging_dir

    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)  # replaced-checkpoint-3 is an old copy of it
    for leftover in ("deleting-checkpoint-17", "replaced-checkpoint-3"):
        (staging_dir(run) / leftover).mkdir(parents=True)
        (staging_dir(run) / leftover / "model.safetensors").write_bytes(b"x")
    clear_staging(run, "checkpoint-30")
    (staging_dir(run) / "checkpoint-30").mkdir()
    publish(run, "checkpoint-30", limit=None, best=None)
    assert (run / "checkpoint-30").is_dir() and not staging_dir(run).exists()
    # A replacement killed before the new copy moved in: its trash is the only copy; kept.
    (staging_dir(run) / "replaced-checkpoint-40").mkdir(parents=True)
    clear_staging(run, "checkpoint-41")
    assert (staging_dir(run) / "replaced-checkpoint-40").is_dir()

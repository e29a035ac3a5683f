"""Launchers: two-process data parallel (accelerate, gloo on CPU) and DeepSpeed ZeRO-2/3
with world size 1 (torchrun). Each launches real processes, so these take ~15-60 s."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llt.data.dataset import ShardDataset
from tests.conftest import run_folder
from tests.procs import HELPER, RECIPES, launcher
from tests.procs import run as _launch

pytestmark = pytest.mark.slow  # every test here starts launcher processes


def llt_lines(stderr: str, prefix: str) -> list[str]:
    """Each time llt itself printed `prefix` (two ranks writing to one pipe can leave it
    mid-line), but not where a launcher quotes a failed child's last line again
    (accelerate 1.16: `RuntimeError: <the line>`)."""
    return re.findall(r"(?<!Error: )" + re.escape(prefix), stderr)


def _flags(model, corpus, out, *extra):
    return ["--model_path", str(model), "--data_path", str(corpus), "--output_path", str(out),
            "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
            "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", *extra]


def test_two_process_data_parallel_trains_every_sample_once_per_epoch(tmp_path, tiny_model_dir,
                                                                      toy_corpora):
    corpus = toy_corpora["qa"]  # 300 samples: 19 steps of 2 x 8, the last one partial
    rec = tmp_path / "seen"
    _launch([*launcher("accelerate", HELPER, 2), str(rec),
             *_flags(tiny_model_dir, corpus, tmp_path / "out", "--max_epochs", "2",
                     "--deepspeed_config_path", "none", "--save_optimizer")])
    ranks = [json.loads(Path(f"{rec}.rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["output_dir"] == ranks[1]["output_dir"]  # one run folder, stamped on rank 0
    n = len(ShardDataset(corpus))
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"])  # same number of steps on each rank
    per_epoch = len(ranks[0]["seen"]) // 2
    for epoch in range(2):
        trained = []
        for r in ranks:
            trained += [i for i in r["seen"][epoch * per_epoch:(epoch + 1) * per_epoch] if i >= 0]
        assert sorted(trained) == list(range(n)), f"epoch {epoch}"
    run = run_folder(tmp_path / "out")
    state = json.loads((run / "checkpoint-38" / "llt_data_state.json").read_text())
    assert state["world_size"] == 2 and state["epoch"] == 2


@pytest.mark.parametrize("stage,launcher_name", [("zero2", "deepspeed"), ("zero3", "torchrun")])
def test_deepspeed_zero_trains_and_saves_a_loadable_model(tmp_path, tiny_model_dir, toy_corpora, stage,
                                                          launcher_name):
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    _launch([*launcher(launcher_name),
             *_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path, "--max_steps", "4",
                     "--deepspeed_config_path", f"configs/deepspeed/{stage}.json", "--save_optimizer")])
    run = run_folder(tmp_path)
    ckpt = run / "checkpoint-4"
    history = json.loads((ckpt / "loss_history.json").read_text())
    assert [e["step"] for e in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert (ckpt / "global_step4").is_dir()  # DeepSpeed's own engine state, for resuming
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [k for k, v in model.state_dict().items() if not (v == base.state_dict()[k]).all()]
    assert len(moved) > 10  # the saved weights are the trained ones, gathered from ZeRO


SEED_DS = {  # the seed's shipped DeepSpeed JSON: explicit optimizer, scheduler and sizes
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 32,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "betas": [0.9, 0.95], "eps": 1e-8,
                                              "weight_decay": 0.0}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 1e-5,
                                                 "warmup_num_steps": 2}},
    "zero_optimization": {"stage": 2},
}


def test_a_deepspeed_json_with_explicit_values_trains_or_names_each_conflict(tmp_path, tiny_model_dir,
                                                                             toy_corpora):
    pytest.importorskip("deepspeed")
    ds = tmp_path / "seed_ds.json"
    ds.write_text(json.dumps(SEED_DS))
    base = [*launcher("torchrun"), "--deepspeed_config_path", str(ds)]
    flags = _flags(tiny_model_dir, toy_corpora["qa"], tmp_path / "ok", "--max_steps", "2")
    # The defaults (8 per device, no accumulation, lr 3e-3 here) disagree with the JSON.
    proc = _launch(base + flags, check=False)
    assert proc.returncode != 0 and llt_lines(proc.stderr, f"llt train: error: --deepspeed_config_path {ds}")
    # Each conflict is named with both values; the wording of each line is HF's, so only the
    # names and values are asserted (in that order, on one line).
    for conflict in (r"train_micro_batch_size_per_gpu\W+1\b.*per_device_train_batch_size\W+8\b",
                     r"gradient_accumulation_steps\W+32\b.*gradient_accumulation_steps\W+1\b",
                     r"optimizer\.params\.lr\W+1e-05\b.*learning_rate\W+0\.003\b"):
        assert re.search(conflict, proc.stderr), proc.stderr[-3000:]
    agree = flags + ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "32",
                     "--learning_rate", "1e-5", "--adam_beta2", "0.95", "--adam_epsilon", "1e-8",
                     "--weight_decay", "0.0"]
    # Warmup is only known once the schedule is: checked when training starts, same message.
    proc = _launch(base + agree, check=False)
    assert proc.returncode != 0 and re.search(r"warmup_num_steps\W+2\b.*warmup_steps", proc.stderr)
    assert llt_lines(proc.stderr, "llt train: error: --deepspeed_config_path")
    # Flags that agree with it: trains with its own AdamW and WarmupLR.
    _launch(base + agree + ["--warmup_steps", "2"])
    [ckpt] = (tmp_path / "ok").glob("run-*/checkpoint-2")  # the failed tries left no checkpoint
    assert [e["step"] for e in json.loads((ckpt / "loss_history.json").read_text())] == [1, 2]


def test_resume_with_a_different_number_of_processes_continues_the_sample_order(
        tmp_path, tiny_model_dir, toy_corpora):
    """2 processes for 3 steps, then 1 process to the end of the epoch: every sample of
    the epoch is trained exactly once across the two runs."""
    corpus = toy_corpora["qa"]  # 300 samples
    rec = tmp_path / "seen"
    _launch([*launcher("accelerate", HELPER, 2), str(rec),
             *_flags(tiny_model_dir, corpus, tmp_path / "out", "--max_steps", "3", "--save_steps", "3",
                     "--save_optimizer", "--deepspeed_config_path", "none", "--output_dir",
                     str(tmp_path / "run"))])
    first = []
    for r in (0, 1):  # the first 3 micro-batches of 8 per rank (later fetches are look-ahead)
        first += [i for i in json.loads(Path(f"{rec}.rank{r}.json").read_text())["seen"][:24] if i >= 0]
    _launch([*launcher("python", HELPER), f"{rec}-resumed",
             *_flags(tiny_model_dir, corpus, tmp_path / "out", "--max_steps", "35", "--save_optimizer",
                     "--deepspeed_config_path", "none", "--output_dir", str(tmp_path / "run"),
                     "--load_ckpt_path", str(tmp_path / "run"))])
    second = [i for i in json.loads(Path(f"{rec}-resumed.rank0.json").read_text())["seen"] if i >= 0]
    assert len(first) == 48
    assert sorted(first + second) == list(range(300))  # 3 + 32 steps: exactly one epoch
    state = json.loads((tmp_path / "run" / "checkpoint-35" / "llt_data_state.json").read_text())
    assert state["world_size"] == 1 and state["epoch"] == 1 and state["step"] == 0


def test_two_process_mixed_run_evaluates_each_held_out_sample_once(tmp_path, tiny_model_dir, toy_corpora):
    """Eval samples are split over the ranks and the sums all-reduced: the 2-process eval
    loss is the one-process, sample-by-sample loss of the same checkpoint."""
    from tests.test_mix_eval import manual_eval

    flags = _flags(tiny_model_dir, f"text={toy_corpora['text']}:0.4", tmp_path / "out", "--eval_split", "0.1",
                   "--eval_steps", "3", "--per_device_eval_batch_size", "3", "--max_steps", "3",
                   "--deepspeed_config_path", "none")
    flags.insert(flags.index("--data_path") + 2, f"qa={toy_corpora['qa']}:0.6")
    _launch([*launcher("accelerate", RECIPES["sft"], 2), *flags])
    run = run_folder(tmp_path / "out")
    history = json.loads((run / "loss_history.json").read_text())
    [ev] = [e for e in history if "eval_loss" in e]
    sums = manual_eval(run / "checkpoint-3", toy_corpora)
    assert ev["eval_tokens"] == int(sums[:, 1].sum())
    assert ev["eval_loss"] == pytest.approx(sums[:, 0].sum() / sums[:, 1].sum(), rel=1e-5)
    assert ev["eval_loss/qa"] == pytest.approx(sums[1, 0] / sums[1, 1], rel=1e-5)
    last = [e for e in history if "loss" in e][-1]
    assert last["tokens_seen/text"] + last["tokens_seen/qa"] == last["tokens_seen"]


def test_damaged_shards_are_verified_once_per_node_and_stop_every_rank(tmp_path, tiny_model_dir, tiny_tok_dir,
                                                                        monkeypatch):
    """Local rank 0 reads and hashes the corpus while the other ranks wait; all of them then
    stop with the same one-line error (none hangs in a collective, none trains)."""
    from types import SimpleNamespace

    import llt.shards.verify
    from llt.errors import DataError
    from llt.toy import toy_records, write_jsonl
    from llt.train.checks import verify_on_local_main
    from tests.conftest import encode

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "t.jsonl", toy_records(50)[0])],
                       encode_type="pretrain", max_length=64)
    data = bytearray((corpus / "c_0.bin").read_bytes())
    data[10] ^= 0x01
    (corpus / "c_0.bin").write_bytes(bytes(data))

    calls = []
    real = llt.shards.verify.verify_corpora
    monkeypatch.setattr(llt.shards.verify, "verify_corpora", lambda paths: calls.append(paths) or real(paths))
    verify_on_local_main([str(corpus)], SimpleNamespace(local_process_index=1))  # not rank 0: no reading
    assert calls == []
    with pytest.raises(DataError, match="c_0.bin: checksum mismatch"):
        verify_on_local_main([str(corpus)], SimpleNamespace(local_process_index=0))
    assert calls == [[str(corpus)]]

    proc = _launch(
        [*launcher("accelerate", RECIPES["sft"], 2),
         *_flags(tiny_model_dir, corpus, tmp_path / "out", "--max_steps", "1", "--deepspeed_config_path", "none")],
        timeout=300, check=False)
    assert proc.returncode != 0
    # One line from each rank; a launcher may quote a failed child's last line again (accelerate 1.16).
    assert len(llt_lines(proc.stderr, "llt train: error: --data_path: the shards failed verification")) == 2, \
        proc.stderr[-3000:]
    assert not list((tmp_path / "out").glob("*/checkpoint-*"))


@pytest.mark.parametrize("launcher_name", ["accelerate", "torchrun"])
def test_two_processes_without_use_cpu_on_a_machine_without_gpu_train_each_sample_once(
        tmp_path, tiny_model_dir, toy_corpora, launcher_name):
    """No --use_cpu, no GPU: the processes train on the CPU as one world of 2 (once, HF saw a
    world of 1 in each process: every sample twice, then a crash at the first save)."""
    corpus = toy_corpora["qa"]
    rec = tmp_path / "seen"
    head = launcher(launcher_name, HELPER, 2)
    flags = [f for f in _flags(tiny_model_dir, corpus, tmp_path / "out") if f != "--use_cpu"]
    proc = _launch([*head, str(rec), *flags, "--max_epochs", "1", "--save_steps", "5",
                    "--deepspeed_config_path", "none"])
    assert len(llt_lines(proc.stderr, "llt: no GPU here: the 2 launched processes train on the CPU")) == 1
    ranks = [json.loads(Path(f"{rec}.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    trained = [i for r in ranks for i in r["seen"] if i >= 0]
    assert sorted(trained) == list(range(len(ShardDataset(corpus))))  # each sample once
    run = run_folder(tmp_path / "out")
    assert (run / "checkpoint-19").is_dir() and (run / "checkpoint-15").is_dir()


def test_a_world_that_hf_sees_differently_is_refused_naming_both_views(monkeypatch):
    from types import SimpleNamespace

    from llt.errors import ConfigError
    from llt.train.checks import check_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    hf = SimpleNamespace(world_size=1, process_index=0, should_save=True)
    with pytest.raises(ConfigError, match=r"the launcher started world size 2, this is rank 1; the training "
                                          r"arguments see world size 1, rank 0, should_save True"):
        check_world(hf)
    check_world(SimpleNamespace(world_size=2, process_index=1, should_save=False))  # agreeing views pass
    with pytest.raises(ConfigError, match="should_save True"):
        check_world(SimpleNamespace(world_size=2, process_index=1, should_save=True))


def test_qlora_under_deepspeed_zero3_stores_the_4bit_weights_in_the_training_dtype(tmp_path, tiny_model_dir,
                                                                                  toy_corpora):
    """ZeRO-3 partitions parameters of one dtype: with a 4-bit base, llt stores the packed
    weights in the training dtype (--bnb_4bit_quant_storage auto). World size 1 on CPU."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("bitsandbytes")
    proc = _launch([*launcher("torchrun"),
                    *_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path, "--max_steps", "3",
                            "--deepspeed_config_path", "configs/deepspeed/zero3.json", "--use_lora",
                            "--load_in_4bit", "--save_optimizer")])
    assert "storage float32) by bitsandbytes" in proc.stderr
    history = json.loads((run_folder(tmp_path) / "checkpoint-3" / "loss_history.json").read_text())
    assert [e["step"] for e in history] == [1, 2, 3] and history[-1]["loss"] < history[0]["loss"]
    assert (run_folder(tmp_path) / "checkpoint-3" / "adapter_model.safetensors").is_file()

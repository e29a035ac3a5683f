"""QLoRA: a 4-bit (or 8-bit) bitsandbytes base with LoRA on top, trained, resumed,
exported and checked on CPU; the PEFT options users reach for through --lora_config_path."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from llt.errors import ConfigError
from tests.conftest import logged_losses, run_folder, train

pytest.importorskip("bitsandbytes", reason="the qlora extra (bitsandbytes) is not installed")


def _args(model, corpus, out, *extra):
    return ["--model_path", str(model), "--data_path", str(corpus), "--output_path", str(out),
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--logging_steps", "1",
            "--use_lora", "--load_in_4bit", *extra]


def _adapter(ckpt):
    from safetensors.torch import load_file
    return load_file(str(ckpt / "adapter_model.safetensors"))


def test_qlora_trains_resumes_exactly_and_exports_a_merged_model(tmp_path, tiny_model_dir, toy_corpora, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llt.runs.export import export

    common = ["--max_steps", "8", "--save_steps", "4", "--save_optimizer", "--add_tokens", "<tool>",
              "--use_bnb_nested_quant", "true"]
    with caplog.at_level(logging.WARNING, logger="llt"):
        assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "a", *common)) == 0
    err = caplog.text
    assert "base quantized to 4-bit nf4 (compute float32, double quant on, storage uint8) by bitsandbytes: " \
           "14 linear layers" in err
    full = run_folder(tmp_path / "a")
    losses = logged_losses(full / "checkpoint-8")
    assert losses[8] < losses[1] - 0.1  # the adapters learn on the frozen 4-bit base
    # Exact resume from the middle.
    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "b", *common,
                       "--load_ckpt_path", str(full / "checkpoint-4"))) == 0
    resumed = run_folder(tmp_path / "b")
    assert logged_losses(resumed / "checkpoint-8") == losses
    wa, wb = _adapter(full / "checkpoint-8"), _adapter(resumed / "checkpoint-8")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # Export: the base re-loaded at full precision and merged; the check prints the
    # difference from the adapter on the quantized base it trained on.
    info = export(str(full), tmp_path / "merged", check=True)
    assert info["merged"] and info["check_max_abs_logit_diff"] < 1e-4
    q = info["check_against_quantized_base"]
    assert q["base"] == "4-bit nf4" and 0 < q["mean_abs_logit_diff"] <= q["max_abs_logit_diff"] < 1.0
    assert 0 <= q["top1_agreement"] <= 1
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert not any("4bit" in type(m).__name__ or "lora" in n for n, m in model.named_modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    new = tok.convert_tokens_to_ids("<tool>")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    head = model.get_output_embeddings().weight
    mean = base.get_output_embeddings().weight.mean(dim=0)
    assert new == head.shape[0] - 1 and not torch.allclose(head[new], mean)  # the added row was trained
    out = model.generate(**tok("hello", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1


def test_llt_export_prints_the_quantization_difference(tmp_path, tiny_model_dir, toy_corpora, capsys):
    from llt.cli import main as llt

    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs", "--max_steps", "2")) == 0
    capsys.readouterr()
    assert llt(["export", str(run_folder(tmp_path / "runs")), "--out", str(tmp_path / "m"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "logits match" in out and "against the adapter on the 4-bit nf4 base it trained on" in out
    info = json.loads((tmp_path / "m" / "llt_export.json").read_text())
    assert info["check_against_quantized_base"]["max_abs_logit_diff"] > 0
    assert llt(["export", str(run_folder(tmp_path / "runs")), "--out", str(tmp_path / "adapter"), "--no-merge"]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_eight_bit_base_trains(tmp_path, tiny_model_dir, toy_corpora, caplog):
    argv = _args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "r", "--max_steps", "3")
    argv[argv.index("--load_in_4bit")] = "--load_in_8bit"
    with caplog.at_level(logging.WARNING, logger="llt"):
        assert train(argv) == 0
    assert "base quantized to 8-bit LLM.int8 by bitsandbytes" in caplog.text
    losses = logged_losses(run_folder(tmp_path / "r") / "checkpoint-3")
    assert losses[3] < losses[1]


@pytest.mark.parametrize("extra,message", [
    (["--load_in_8bit"], "--load_in_4bit and --load_in_8bit together"),
    (["--use_lora", "false"], "--load_in_4bit: quantized weights cannot be trained directly; add --use_lora"),
])
def test_quantization_flags_that_cannot_work_are_refused(tmp_path, tiny_model_dir, toy_corpora, extra, message,
                                                        capsys):
    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path, *extra)) == 2
    assert f"llt train: error: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before a run folder was made


def test_missing_bitsandbytes_names_the_extra(tmp_path, tiny_model_dir, toy_corpora, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path)) == 2
    assert ("--load_in_4bit needs bitsandbytes, which is not installed: pip install 'llt[qlora]'"
            in capsys.readouterr().err)


def test_peft_options_pass_through_and_an_unknown_field_is_named(tmp_path, tiny_model_dir, toy_corpora):
    from llt.model.lora import apply_lora
    from types import SimpleNamespace
    from transformers import AutoModelForCausalLM

    cfg = tmp_path / "dora.json"
    cfg.write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "use_dora": True,
                               "use_rslora": True, "modules_to_save": ["lm_head"]}))
    model = apply_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                       SimpleNamespace(lora_config_path=str(cfg)), [])
    names = [n for n, _ in model.named_parameters()]
    assert any("lora_magnitude_vector" in n for n in names)  # DoRA
    assert any("mlp.down_proj.lora_A" in n for n in names) and any("self_attn.o_proj.lora_A" in n for n in names)
    assert any("modules_to_save" in n and "lm_head" in n for n in names)
    peft_cfg = model.peft_config["default"]
    assert peft_cfg.use_rslora and peft_cfg.use_dora
    # The same options train on the 4-bit base.
    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "q", "--max_steps", "2",
                       "--lora_config_path", str(cfg))) == 0
    cfg.write_text(json.dumps({"r": 4, "use_doraa": True}))
    with pytest.raises(ConfigError, match=r"'use_doraa' is not a LoraConfig field; did you mean use_dora"):
        apply_lora(None, SimpleNamespace(lora_config_path=str(cfg)), [])


@pytest.mark.slow
def test_two_process_qlora_with_a_mix_and_eval_preempted_then_resumed_equals_the_uninterrupted_run(
        tmp_path, tiny_model_dir, toy_corpora):
    """QLoRA under 2-process data parallel, two weighted corpora and a held-out split:
    SIGUSR1 to rank 1 stops both ranks with a resumable checkpoint, and the resumed run
    ends with the uninterrupted run's adapter and losses, bit for bit."""
    import signal
    import time

    import psutil

    from tests.procs import RECIPES, launcher, run, start

    steps = 8

    def cmd(out, *extra):
        return [*launcher("accelerate", RECIPES["sft"], 2), "--model_path", str(tiny_model_dir), "--data_path", f"text={toy_corpora['text']}:0.3",
                f"qa={toy_corpora['qa']}:0.7", "--eval_split", "0.1", "--eval_steps", "4",
                "--output_dir", str(out), "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
                "--deepspeed_config_path", "none", "--logging_steps", "1", "--per_device_train_batch_size", "4",
                "--learning_rate", "1e-2", "--seed", "5", "--max_steps", str(steps), "--save_steps", "1",
                "--save_optimizer", "--use_lora", "--load_in_4bit", *extra]

    def final(run):
        ckpt = run / f"checkpoint-{steps}"
        return _adapter(ckpt), logged_losses(ckpt)

    def ckpts(run):
        return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))

    run(cmd(tmp_path / "ref"))
    ref_w, ref_loss = final(tmp_path / "ref")
    history = json.loads((tmp_path / "ref" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert any("eval_loss" in e for e in history["log_history"])
    assert any("loss/text" in e for e in history["log_history"])

    folder = tmp_path / "run"
    proc = start(cmd(folder), start_new_session=True)
    while not (folder.exists() and ckpts(folder)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "sft.py" in " ".join(p.cmdline()) and "accelerate" not in " ".join(p.cmdline())]
    next(w for w in workers if w.environ().get("RANK") == "1").send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by" in out and ckpts(folder)[-1] < steps
    run(cmd(folder, "--load_ckpt_path", str(folder)))
    w, losses = final(folder)
    assert losses == ref_loss
    assert w.keys() == ref_w.keys() and all(torch.equal(w[k], ref_w[k]) for k in w)

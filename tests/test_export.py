"""`llt export` and `llt generate`: from a full, LoRA or ZeRO-3 checkpoint to a standalone HF
model folder with the checkpoint's logits; generation with the chat template."""

from __future__ import annotations

import json

import pytest
import torch

from llt.errors import CheckpointError
from llt.cli import main as llt
from llt.runs.export import export
from tests.conftest import encode, run_folder, train

PROBE = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 1, 64, 128]])


def _args(model, corpus, out, *extra):
    corpora = [str(c) for c in corpus] if isinstance(corpus, list) else [str(corpus)]
    return ["--model_path", str(model), "--data_path", *corpora, "--output_path", str(out),
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--logging_steps", "1", *extra]


def _logits(model, ids=PROBE):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _load(folder, **kw):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(folder), **kw)


def test_full_checkpoint_exports_to_a_folder_with_its_logits(tmp_path, tiny_model_dir, toy_corpora, capsys):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs", "--max_steps", "3")) == 0
    run = run_folder(tmp_path / "runs")
    out = tmp_path / "export"
    assert llt(["export", str(run), "--out", str(out), "--check"]) == 0  # a run folder: its newest checkpoint
    printed = capsys.readouterr().out
    assert "checkpoint-3 (full, step 3)" in printed and "logits match" in printed
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "llt_export.json"} <= names
    ckpt = _load(run / "checkpoint-3")
    exported = _load(out)
    assert torch.equal(_logits(ckpt), _logits(exported))
    trained_away = not torch.equal(_logits(_load(tiny_model_dir)), _logits(exported))
    assert trained_away
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    info = json.loads((out / "llt_export.json").read_text())
    assert info["kind"] == "full" and info["step"] == 3 and info["dtype"] == "float32"
    # bf16, sharded: every tensor stored in bf16, and the logits close to the fp32 ones.
    small = tmp_path / "bf16"
    export(str(run / "checkpoint-3"), small, dtype="bf16", max_shard_size="100KB")
    shards = sorted(small.glob("model-*.safetensors"))
    assert len(shards) > 1 and (small / "model.safetensors.index.json").is_file()
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    assert (_logits(_load(small)) - _logits(exported)).abs().max() < 0.1
    # An existing folder is not overwritten unless asked.
    with pytest.raises(CheckpointError, match="pass --overwrite"):
        export(str(run), out)
    export(str(run), out, overwrite=True)
    assert not list(tmp_path.glob(".export*"))


def test_interrupted_export_leaves_no_finished_looking_folder(tmp_path, tiny_model_dir, toy_corpora, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs", "--max_steps", "1")) == 0

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", boom)
    with pytest.raises(OSError):
        export(str(run_folder(tmp_path / "runs")), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_lora_checkpoint_with_added_tokens_merges_to_the_adapters_logits(tmp_path, tiny_model_dir, toy_corpora):
    from peft import PeftModel
    from transformers import AutoTokenizer

    # Two corpora: the per-corpus loss goes through PEFT's wrappers too.
    assert train(_args(tiny_model_dir, [toy_corpora["qa_packed"], f"text={toy_corpora['text']}"],
                       tmp_path / "runs", "--max_steps", "4", "--use_lora", "--add_tokens", "<tool>")) == 0
    ckpt = run_folder(tmp_path / "runs") / "checkpoint-4"
    logged = [e for e in json.loads((ckpt / "loss_history.json").read_text()) if "loss" in e]
    assert all("loss/qa_packed" in e or "loss/text" in e for e in logged)
    out = tmp_path / "merged"
    info = export(str(ckpt), out, check=True)
    assert info["kind"] == "lora" and info["merged"] and info["base_model"] == str(tiny_model_dir)
    assert not (out / "adapter_config.json").exists()
    tok = AutoTokenizer.from_pretrained(str(out))
    new_id = tok.convert_tokens_to_ids("<tool>")
    assert new_id == len(tok) - 1
    # The reference: the base grown for the new token, with the adapter on top, unmerged.
    base = _load(tiny_model_dir)
    base.resize_token_embeddings(len(tok))
    adapted = PeftModel.from_pretrained(base, str(ckpt))
    probe = torch.cat([PROBE, torch.tensor([[new_id]])], dim=1)
    merged = _load(out)
    assert merged.get_input_embeddings().weight.shape[0] == len(tok)
    assert (_logits(adapted, probe) - _logits(merged, probe)).abs().max() < 1e-4
    assert not torch.allclose(_logits(_load(tiny_model_dir)), _logits(merged)[:, :, :-1], atol=1e-3)
    # In bf16 the merged model keeps RoPE's frequencies in fp32, as transformers loads them,
    # so it gives the logits the exported bf16 folder gives.
    from llt.runs.load import load_checkpoint
    half = load_checkpoint(ckpt, "bf16")
    assert half.model.model.rotary_emb.inv_freq.dtype == torch.float32
    export(str(ckpt), tmp_path / "bf16", dtype="bf16")
    assert torch.equal(_logits(half.model), _logits(_load(tmp_path / "bf16", dtype=torch.bfloat16)))
    # --no-merge: the adapter and tokenizer, loadable on the grown base.
    adapter = tmp_path / "adapter"
    assert llt(["export", str(ckpt), "--out", str(adapter), "--no-merge"]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    base = _load(tiny_model_dir)
    base.resize_token_embeddings(len(tok))
    again = PeftModel.from_pretrained(base, str(adapter))
    assert (_logits(again, probe) - _logits(merged, probe)).abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_checkpoint_exports_from_model_weights_or_consolidated_shards(tmp_path, tiny_model_dir, toy_corpora,
                                                                          stage):
    pytest.importorskip("deepspeed")
    from tests.procs import launcher, run
    from tests.test_train_dist import _flags

    run([*launcher("torchrun"),
             *_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs", "--max_steps", "3",
                     "--deepspeed_config_path", f"configs/deepspeed/{stage}.json", "--save_optimizer",
                     "--eval_split", "0.1", "--eval_steps", "3")])
    ckpt = run_folder(tmp_path / "runs") / "checkpoint-3"
    evals = [e for e in json.loads((ckpt / "loss_history.json").read_text()) if "eval_loss" in e]
    assert [e["step"] for e in evals] == [3] and evals[0]["eval_loss"] > 0  # evaluation under ZeRO
    assert (ckpt / "global_step3").is_dir()
    reference = _logits(_load(ckpt))  # the weights HF saved (gathered from ZeRO-3; fp32 here)
    assert not torch.equal(reference, _logits(_load(tiny_model_dir)))
    from_model = export(str(ckpt), tmp_path / "a")
    from_shards = export(str(ckpt), tmp_path / "b", weights="zero")
    assert from_model["kind"] == "full" and from_shards["kind"] == "zero"
    assert torch.allclose(_logits(_load(tmp_path / "a")), reference, atol=1e-5)
    assert torch.allclose(_logits(_load(tmp_path / "b")), reference, atol=1e-5)
    # A ZeRO checkpoint whose model weights are missing is consolidated from its shards.
    (ckpt / "model.safetensors").unlink()
    assert export(str(ckpt), tmp_path / "c")["kind"] == "zero"
    assert torch.allclose(_logits(_load(tmp_path / "c")), reference, atol=1e-5)


def test_export_names_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint-N folder"):
        export(str(tmp_path / "empty"), tmp_path / "out")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export(str(tmp_path / "missing"), tmp_path / "out")


def test_generate_answers_what_training_taught_with_the_chat_template(tmp_path, tiny_tok_dir, capsys):
    """A tiny model trained to memorise four chat-formatted answers gives them back."""
    from llt.toy import build_tiny_model, write_jsonl

    pairs = [{"q": f"What is {x} plus {y}?", "a": f"{x} plus {y} is {x + y}."} for x, y in
             [(3, 4), (10, 20), (7, 7), (41, 2)]]
    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "qa.jsonl", pairs * 4)],
                       encode_type="qa", qa_template="chat", max_length=64, corpus_name="qa")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_tok_dir))
    model_dir = build_tiny_model(tmp_path / "model", len(tok), hidden=64, layers=2)
    tok.save_pretrained(str(model_dir))
    assert train(_args(model_dir, corpus, tmp_path / "runs", "--max_steps", "60", "--learning_rate", "5e-3",
                       "--warmup_steps", "5")) == 0
    run = run_folder(tmp_path / "runs")
    capsys.readouterr()
    assert llt(["generate", str(run), "--max_new_tokens", "16",
                *[a for p in pairs for a in ("--prompt", p["q"])]]) == 0
    printed = capsys.readouterr().out
    for p in pairs:
        assert f"### prompt {pairs.index(p) + 1}: {p['q']}\n{p['a']}\n" in printed
    # --raw skips the template: the model never saw these prompts bare.
    assert llt(["generate", str(run), "--raw", "--max_new_tokens", "8", "--prompt", pairs[0]["q"]]) == 0
    assert pairs[0]["a"] not in capsys.readouterr().out


def test_a_chat_template_given_at_encode_time_goes_with_the_run_to_export(tmp_path, tiny_tok_dir, tiny_model_dir):
    """`llt encode --chat_template FILE`: the run saves that template with its tokenizer, so the
    exported model is prompted as it was trained."""
    from transformers import AutoTokenizer

    from llt.toy import CHATML, write_jsonl

    custom = CHATML.replace("<|im_start|>", "<|im_start|> ")  # any template that differs from the tokenizer's
    (tmp_path / "t.jinja").write_text(custom)
    recs = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 8
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "c.jsonl", recs)],
                              encode_type="chat", chat_template=str(tmp_path / "t.jinja"))
    assert manifest["chat"]["template"] == custom and manifest["chat"]["template_file"] == str(tmp_path / "t.jinja")
    assert train(_args(tiny_model_dir, corpus, tmp_path / "runs", "--max_steps", "1")) == 0
    assert llt(["export", str(run_folder(tmp_path / "runs")), "--out", str(tmp_path / "export")]) == 0
    assert AutoTokenizer.from_pretrained(str(tmp_path / "export")).chat_template == custom

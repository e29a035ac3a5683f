"""Training on CPU with a tiny Llama: loss, isolation of packed documents, checkpoints,
exact resume, LoRA, added tokens, the seed's flags and YAML recipes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import logged_losses, run_folder, train

FAST = ["--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--seed", "7"]


def _args(tiny_model_dir, corpus, out, *extra):
    return ["--model_path", str(tiny_model_dir), "--data_path", str(corpus),
            "--output_path", str(out), *FAST, *extra]


def test_loss_falls_and_every_output_loads(tmp_path, tiny_model_dir, toy_corpora):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path, "--max_epochs", "8")) == 0
    run = run_folder(tmp_path)
    assert re.fullmatch(r"run-\d{8}-\d{6}", run.name)
    losses = logged_losses(run / sorted(p.name for p in run.glob("checkpoint-*"))[-1])
    steps = sorted(losses)
    first, last = losses[steps[0]], sum(losses[s] for s in steps[-3:]) / 3
    assert last < 0.5 * first, losses
    ckpt = run / f"checkpoint-{steps[-1]}"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    history = json.loads((ckpt / "loss_history.json").read_text())
    assert [e["loss"] for e in history if "loss" in e] == [losses[s] for s in steps]
    assert (ckpt / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "loss.png").is_file()
    config = json.loads((run / "llt_config.json").read_text())
    assert config["data_args"]["data_path"] == [str(toy_corpora["qa_packed"])]
    assert config["args"]["learning_rate"] == 3e-3
    # Without --save_optimizer a checkpoint is weights only.
    assert not (ckpt / "optimizer.pt").exists() and not (ckpt / "llt_data_state.json").exists()
    # Throughput figures are logged beside the loss.
    assert all(e["trained_tokens_per_second"] > 0 for e in history if "loss" in e)


def _trainer(tiny_model_dir, corpus, out, *extra):
    from llt.train.sft import build_trainer

    argv = ["--deepspeed_config_path", "none", "--use_cpu", "--report_to", "none",
            *_args(tiny_model_dir, corpus, out, *extra)]
    return build_trainer(argv)


def _doc_slices(position_ids, length):
    pos = position_ids.tolist()[:length]
    starts = [i for i, p in enumerate(pos) if p == 0] + [length]
    return list(zip(starts[:-1], starts[1:]))


@pytest.mark.parametrize("attn,flat", [("llt_sdpa_varlen", True), ("sdpa", False), ("sdpa", True),
                                       ("eager", False)])
def test_packed_documents_give_the_logits_they_give_alone(tmp_path, tiny_model_dir, toy_corpora, attn, flat):
    """Through the training call path (sampler -> collator -> Trainer.compute_loss -> model
    in train mode), each document of a packed sample sees only itself: SDPA per document
    on one flat row (the CPU default), and a block mask from the positions on one padded
    row per sample or on one flat row."""
    trainer = _trainer(tiny_model_dir, toy_corpora["qa_packed"], tmp_path, "--attn_implementation", attn)
    assert trainer.data_collator.flat is (attn == "llt_sdpa_varlen")
    trainer.data_collator.flat = flat
    model = trainer.model
    model.train()
    loader = trainer.get_train_dataloader()
    lengths = [len(trainer.train_dataset[i]["input_ids"]) for i in next(iter(trainer.sampler))]
    batch = next(iter(loader))
    assert "attention_mask" not in batch
    rows = [(0, sum(lengths))] if flat else list(enumerate(lengths))
    assert batch["input_ids"].shape[0] == len(rows)
    with torch.no_grad():
        # The batch as the model gets it in training; logits come from the same forward
        # without labels (llt's training loss never builds full logits).
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = trainer.compute_loss(model, dict(batch))
        n = (batch["labels"][:, 1:] != -100).sum()
        from_logits = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum") / n
        assert loss.item() == pytest.approx(from_logits.item(), abs=1e-5)
        worst, n_docs = 0.0, 0
        for r, length in rows:
            for lo, hi in _doc_slices(batch["position_ids"][r], length):
                alone = model(input_ids=batch["input_ids"][r:r + 1, lo:hi]).logits
                worst = max(worst, (logits[r:r + 1, lo:hi] - alone).abs().max().item())
                n_docs += 1
        assert n_docs > 8 and worst < 1e-4, worst
        # The trap this guards against: with a KV cache built in train mode, transformers
        # ignores the positions and the documents attend to each other.
        if attn == "llt_sdpa_varlen":
            return  # boundaries come as cu_seq_lens, not through the cache-sensitive mask
        model.config.use_cache = True
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        lo, hi = _doc_slices(batch["position_ids"][0], rows[0][1])[-1]
        alone = model(input_ids=batch["input_ids"][:1, lo:hi], use_cache=False).logits
        assert (leaky[:1, lo:hi] - alone).abs().max().item() > 100 * max(worst, 1e-6)
        model.config.use_cache = False


@pytest.mark.parametrize("chunk_rows", [None, 5])
def test_chunked_loss_equals_the_stock_loss_and_gradients(tiny_model_dir, toy_corpora, chunk_rows):
    from transformers import AutoModelForCausalLM

    from llt.data.collate import PaddingFreeCollator
    from llt.data.dataset import ShardDataset
    from llt.model.loss import use_chunked_loss

    ds = ShardDataset(toy_corpora["qa_packed"])
    batch = PaddingFreeCollator(flat=False, pad_token_id=0)([ds[i] for i in range(4)])
    batch.pop("llt_counts")
    results = []
    for chunked in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model.config.use_cache = False
        if chunked:
            assert use_chunked_loss(model, chunk_rows=chunk_rows)
        loss = model(**batch, num_items_in_batch=torch.tensor(250)).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
    (stock, g0), (chunked, g1) = results
    assert chunked == pytest.approx(stock, rel=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("router_loss", [False, True])
def test_chunked_loss_keeps_a_moe_routers_load_balancing_loss(tmp_path, tiny_tok, toy_corpora, router_loss):
    """A mixture-of-experts model trained with its router's auxiliary loss: the chunked
    loss adds the same term the model's own forward adds, with the same gradients."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from llt.data.collate import PaddingFreeCollator
    from llt.data.dataset import ShardDataset
    from llt.model.loss import use_chunked_loss

    cfg = MixtralConfig(vocab_size=len(tiny_tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        output_router_logits=router_loss, router_aux_loss_coef=0.5, max_position_embeddings=256)
    torch.manual_seed(0)
    MixtralForCausalLM(cfg).save_pretrained(tmp_path / "moe")
    ds = ShardDataset(toy_corpora["qa_packed"])
    batch = PaddingFreeCollator(flat=False, pad_token_id=0)([ds[i] for i in range(2)])
    batch.pop("llt_counts")
    results = []
    for chunked in (False, True):
        model = MixtralForCausalLM.from_pretrained(tmp_path / "moe")
        if chunked:
            assert use_chunked_loss(model)
        out = model(**batch)
        out.loss.backward()
        results.append((out.loss.item(), out.aux_loss, {n: p.grad for n, p in model.named_parameters()}))
    (stock, aux0, g0), (chunked, aux1, g1) = results
    assert chunked == pytest.approx(stock, rel=1e-6)
    if router_loss:
        assert aux1 is not None and aux1.item() == pytest.approx(aux0.item(), rel=1e-6) and aux1.item() > 0
        router = [n for n in g0 if "gate" in n and "experts" not in n]
        assert router and all(g1[n] is not None and g1[n].abs().sum() > 0 for n in router)  # the router learns
    for name in g0:
        if g0[name] is None:
            assert g1[name] is None
            continue
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4)


def test_padding_free_and_padded_batches_give_the_same_loss(tmp_path, tiny_model_dir, toy_corpora):
    losses = {}
    for padding in ("free", "longest", "max_length"):
        trainer = _trainer(tiny_model_dir, toy_corpora["qa"], tmp_path / padding, "--padding", padding)
        batch = next(iter(trainer.get_train_dataloader()))
        counts = batch["llt_counts"].tolist()
        n = int((batch["labels"] != -100).sum())
        assert counts[0] == n
        if padding != "free":
            assert counts[1] == batch["attention_mask"].sum()
        with torch.no_grad():
            losses[padding] = trainer.compute_loss(trainer.model, batch, num_items_in_batch=n).item()
        if padding == "max_length":
            assert batch["input_ids"].shape[1] == 128
    assert losses["free"] == pytest.approx(losses["longest"], abs=1e-5)
    assert losses["free"] == pytest.approx(losses["max_length"], abs=1e-5)
    with pytest.raises(Exception, match="--padding free"):
        _trainer(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "x", "--padding", "longest")


def _weights(ckpt):
    from safetensors.torch import load_file
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("resume_step", [3, 5])
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, tiny_model_dir, toy_corpora,
                                                         resume_step):
    """Checkpoint at every step; resuming from one gives bit-identical losses and final
    weights. 36 samples, 8 per micro-batch, 2 micro-batches per step: an epoch is 3
    steps, so step 3 is an epoch boundary and step 5 is mid-epoch (4 micro-batches in)."""
    common = ["--max_steps", "9", "--save_steps", "1", "--save_optimizer", "--gradient_accumulation_steps",
              "2", "--warmup_steps", "2", "--lr_scheduler_type", "cosine"]
    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "a", *common)) == 0
    full = run_folder(tmp_path / "a")
    state = json.loads((full / f"checkpoint-{resume_step}" / "llt_data_state.json").read_text())
    assert state["step"] > 0 or state["epoch"] > 0
    assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "b", *common,
                       "--load_ckpt_path", str(full / f"checkpoint-{resume_step}"))) == 0
    resumed = run_folder(tmp_path / "b")
    a, b = logged_losses(full / "checkpoint-9"), logged_losses(resumed / "checkpoint-9")
    assert sorted(b) == list(range(1, 10))
    assert a == b  # exact on CPU, including the learning rate schedule's effect
    wa, wb = _weights(full / "checkpoint-9"), _weights(resumed / "checkpoint-9")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_from_a_run_folder_takes_its_newest_checkpoint_and_checks_the_setup(
        tmp_path, tiny_model_dir, toy_corpora, capsys):
    common = ["--max_steps", "4", "--save_steps", "2", "--save_optimizer"]
    assert train(_args(tiny_model_dir, toy_corpora["qa"], tmp_path / "a", *common)) == 0
    run = run_folder(tmp_path / "a")
    assert train(_args(tiny_model_dir, toy_corpora["qa"], tmp_path / "b", "--max_steps", "6",
                       "--save_optimizer", "--load_ckpt_path", str(run))) == 0
    resumed = run_folder(tmp_path / "b")
    assert sorted(logged_losses(resumed / "checkpoint-6")) == list(range(1, 7))
    # A changed batch size cannot continue the same sample order.
    assert train(_args(tiny_model_dir, toy_corpora["qa"], tmp_path / "c", "--max_steps", "6",
                       "--per_device_train_batch_size", "4", "--load_ckpt_path", str(run))) == 2
    assert "--per_device_train_batch_size (8 -> 4)" in capsys.readouterr().err
    # A weights-only checkpoint says how to use it instead.
    assert train(_args(tiny_model_dir, toy_corpora["qa"], tmp_path / "d", "--max_steps", "2")) == 0
    weights_only = run_folder(tmp_path / "d") / "checkpoint-2"
    assert train(_args(tiny_model_dir, toy_corpora["qa"], tmp_path / "e",
                       "--load_ckpt_path", str(weights_only))) == 2
    assert "saved without --save_optimizer" in capsys.readouterr().err


def _eval_loss(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_lora_adapter_is_saved_and_reloads_to_the_same_loss(tmp_path, tiny_model_dir, toy_corpora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer = _trainer(tiny_model_dir, toy_corpora["qa_packed"], tmp_path, "--use_lora", "--max_steps", "6",
                       "--learning_rate", "1e-2")
    batch = next(iter(trainer.get_train_dataloader()))
    before = _eval_loss(trainer.model, batch)
    trainer.train()
    after = _eval_loss(trainer.model, batch)
    assert after < before
    ckpt = run_folder(tmp_path) / "checkpoint-6"
    adapter = ckpt / "adapter_model.safetensors"
    assert adapter.stat().st_size > 1000 and not (ckpt / "model.safetensors").exists()
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert set(cfg["target_modules"]) == {"q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert _eval_loss(base, batch) == pytest.approx(before, abs=1e-5)
    reloaded = PeftModel.from_pretrained(base, ckpt)
    assert _eval_loss(reloaded, batch) == pytest.approx(after, abs=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_add_tokens_mean_initialised_and_trained(tmp_path, tiny_model_dir, toy_corpora, lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = ["--add_tokens", "<|tool|>,<|obs|>", "--max_steps", "3"] + (["--use_lora"] if lora else [])
    trainer = _trainer(tiny_model_dir, toy_corpora["qa"], tmp_path, *extra)
    tok = trainer.processing_class
    new = tok.convert_tokens_to_ids(["<|tool|>", "<|obs|>"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    old = base.get_input_embeddings().weight.shape[0]
    assert new == [old, old + 1]
    model = trainer.model.get_base_model() if lora else trainer.model
    for table, ref in ((model.get_input_embeddings().weight, base.get_input_embeddings().weight),
                       (model.get_output_embeddings().weight, base.get_output_embeddings().weight)):
        assert table.shape[0] == old + 2
        torch.testing.assert_close(table[new].detach(), ref.mean(0, keepdim=True).expand(2, -1))
    head_before = base.get_output_embeddings().weight.mean(0).clone()
    trainer.train()
    ckpt = run_folder(tmp_path) / "checkpoint-3"
    saved_tok = AutoTokenizer.from_pretrained(ckpt)
    assert saved_tok.convert_tokens_to_ids(["<|tool|>", "<|obs|>"]) == new
    if lora:
        assert any("trainable_tokens" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
        fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        fresh.resize_token_embeddings(len(saved_tok))
        loaded = PeftModel.from_pretrained(fresh, ckpt).merge_and_unload()
    else:
        loaded = AutoModelForCausalLM.from_pretrained(ckpt)
    head = loaded.get_output_embeddings().weight
    assert head.shape[0] == old + 2
    # The new rows of the output head moved in training (their logits get gradients).
    assert not torch.allclose(head[new], head_before.expand(2, -1), atol=1e-6)


def test_seed_flag_spelling(tmp_path, tiny_model_dir, toy_corpora):
    argv = ["--model_path", str(tiny_model_dir), "--data_path", str(toy_corpora["qa"]),
            "--output_path", str(tmp_path), "--save_name", "seedrun", "--max_epochs", "2",
            "--max_steps", "3", "--save_steps", "2", "--save_epochs", "1", "--save_optimizer", "True",
            "--shuffle_data", "False", "--per_device_train_batch_size", "8"]
    assert train(argv) == 0
    run = run_folder(tmp_path)
    assert re.fullmatch(r"seedrun-\d{8}-\d{6}", run.name)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (run / "checkpoint-3" / "optimizer.pt").is_file()
    state = json.loads((run / "checkpoint-3" / "llt_data_state.json").read_text())
    assert state["shuffle"] is False and state["step"] == 3


def test_yaml_recipe_gives_defaults_flags_override_unknown_keys_fail(tmp_path, tiny_model_dir, toy_corpora):
    from llt.train.config import ConfigError
    from llt.train.parse import parse_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_path: {tiny_model_dir}\ndata_path: [{toy_corpora['qa']}]\n"
                      "learning_rate: 1.0e-4\nmax_epochs: 4\nuse_lora: true\ndeepspeed_config_path: none\n")
    m, d, lora, args = parse_args(["--config", str(recipe), "--learning_rate", "5e-4"])
    assert args.learning_rate == 5e-4 and args.num_train_epochs == 4 and lora.use_lora
    assert d.data_path == [str(toy_corpora["qa"])] and args.deepspeed is None
    recipe.write_text("learning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError, match="unknown key.*learning_rat"):
        parse_args(["--config", str(recipe)])
    with pytest.raises(ConfigError, match="--model_path is required"):
        parse_args(["--data_path", "x"])


@pytest.mark.parametrize("flags,message", [
    (["--max_epochs", "0"], "nothing to train"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0"),
    (["--precision", "fp16", "--bf16"], "--precision fp16 contradicts"),
    (["--save_epochs", "-1"], "--save_epochs -1"),
    (["--deepspeed_config_path", "nope.json"], "--deepspeed_config_path nope.json: no such file"),
])
def test_contradictory_or_impossible_flags_fail_naming_the_flag(flags, message):
    from llt.train.config import ConfigError
    from llt.train.parse import parse_args

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_args(["--model_path", "m", "--data_path", "d", "--use_cpu", *flags])


def test_shipped_recipes_parse(tmp_path):
    from pathlib import Path

    from llt.train.grpo.config import GrpoArguments
    from llt.train.kto.config import KtoArguments
    from llt.train.parse import parse_args
    from llt.train.preference.config import PreferenceArguments
    from llt.train.reward.config import RewardArguments

    own = {"dpo": PreferenceArguments, "reward": RewardArguments, "kto": KtoArguments, "grpo": GrpoArguments}
    for recipe in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")):
        # recipes/dpo.py's, recipes/reward.py's and recipes/kto.py's own flags
        extra = tuple(cls for name, cls in own.items() if name in recipe.stem)
        groups = parse_args([str(recipe), "--model_path", "m", "--data_path", "d", "--use_cpu",
                             "--output_dir", str(tmp_path / recipe.stem)], extra)
        assert groups[3].output_dir == str(tmp_path / recipe.stem)


def test_lora_config_naming_missing_modules_fails_before_training(tmp_path, tiny_model_dir, toy_corpora,
                                                                  capsys):
    bad = tmp_path / "lora.json"
    bad.write_text(json.dumps({"r": 4, "target_modules": ["c_attn"]}))
    assert train(_args(tiny_model_dir, toy_corpora["qa"], tmp_path, "--use_lora",
                       "--lora_config_path", str(bad))) == 2
    err = capsys.readouterr().err
    assert "c_attn" in err and "q_proj" in err and str(bad) in err


def test_help_lists_every_group_of_flags(capsys):
    from llt.train.parse import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--eval_split", "0.1", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model_path", "--data_path", "--use_lora", "--learning_rate", "--load_ckpt_path"):
        assert flag in out


def test_held_out_data_turns_evaluation_on_at_parse_time_unless_told_otherwise(tmp_path):
    from llt.errors import ConfigError
    from llt.train.parse import parse_args

    base = ["--model_path", "m", "--data_path", "d", "--use_cpu", "--output_dir", str(tmp_path / "r"),
            "--logging_steps", "7"]
    *_, args = parse_args(base + ["--eval_split", "0.1"])
    assert (args.eval_strategy.value, args.eval_steps, args.metric_for_best_model, args.greater_is_better) == \
        ("steps", 7, "loss", False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("eval_split: 4\neval_strategy: 'no'\n")
    *_, args = parse_args([str(recipe), *base])
    assert args.eval_strategy.value == "no"
    *_, args = parse_args(base)
    assert args.eval_strategy.value == "no" and args.metric_for_best_model is None
    with pytest.raises(ConfigError, match="--eval_strategy steps: no held-out data"):
        parse_args(base + ["--eval_strategy", "steps"])


def test_two_lora_runs_with_the_same_seed_start_from_the_same_adapter(tmp_path, tiny_model_dir, toy_corpora):
    """LoRA's A matrices are drawn while the model is built, before HF's Trainer seeds; llt
    seeds first, so the same --seed gives the same run (it did not: step 2 differed)."""
    from safetensors.torch import load_file

    weights = []
    for name in ("a", "b", "c"):
        seed = "7" if name != "c" else "8"
        assert train(_args(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / name, "--use_lora",
                           "--max_steps", "2", "--seed", seed)) == 0
        weights.append(load_file(str(run_folder(tmp_path / name) / "checkpoint-2" / "adapter_model.safetensors")))
    a, b, c = weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_building_the_arguments_changes_nothing_outside_them(tmp_path, monkeypatch):
    """Arguments are plain data: building them (in a test, a notebook) leaves HF's progress
    bars and the process group alone; the run's set-up does those, once."""
    from transformers.utils import logging as hf_logging

    from llt.train.config import LltTrainingArguments
    from llt.train.setup import prepare_run

    hf_logging.enable_progress_bar()
    args = LltTrainingArguments(output_path=str(tmp_path), save_name="r", use_cpu=True)  # stdout is no tty here
    assert args.progress_lines and args.disable_tqdm and hf_logging.is_progress_bar_enabled()
    assert args.output_dir == str(tmp_path / "r") and args.stamp_run_folder
    prepare_run(args)
    assert not hf_logging.is_progress_bar_enabled()
    assert re.fullmatch(r"r-\d{8}-\d{6}", Path(args.output_dir).name)
    named = args.output_dir
    prepare_run(args)  # named once
    assert args.output_dir == named
    hf_logging.enable_progress_bar()

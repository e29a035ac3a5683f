"""Reward models: loss and gradients equal to TRL's RewardTrainer on the same token ids; a LoRA
reward model learns, holds out pairs, exports, and scores in transformers as in training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import encode, read_corpus, run_folder

from llt.toy import write_jsonl

trl = pytest.importorskip("trl", reason="TRL is the reference for the equivalence tests (pip install trl)")
from test_preference import PAIRS, _grads  # noqa: E402  (the DPO tests' six pairs and gradient helper)



def _pairs_corpus(tmp_path, tok_dir, records=PAIRS, **kw):
    return encode(tmp_path, tok_dir, [write_jsonl(tmp_path / "p.jsonl", records)], encode_type="preference",
                  corpus_name=kw.pop("corpus_name", "pairs"), **kw)[1]


def _sides(sample):
    toks, _, docs = sample
    return toks[:docs[1]], toks[docs[1]:]


def _llt_trainer(tmp_path, tok_dir, model_dir, *flags, corpus=None):
    from llt.train.reward import build_trainer

    corpus = corpus or _pairs_corpus(tmp_path, tok_dir)
    trainer = build_trainer(["--model_path", str(model_dir), "--data_path", str(corpus), "--output_path",
                             str(tmp_path / "runs"), "--per_device_train_batch_size", str(len(PAIRS)),
                             "--use_cpu", "true", "--report_to", "none", "--seed", "0", *flags])
    return trainer, next(iter(trainer.get_train_dataloader())), corpus


MARGINS = [0.5, -0.3, 1.0, 0.0, 2.0, 0.25]


@pytest.mark.parametrize("center, margins", [(None, False), (0.05, False), (None, True)])
def test_loss_and_gradients_equal_trl(tmp_path, tiny_tok_dir, tiny_tok, tiny_model_dir, center, margins):
    """With margins: TRL's optional `margin` field, stored per pair by --margin_field."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    flags = ["--center_rewards_coefficient", str(center)] if center else []
    records = [{**p, "margin": m} for p, m in zip(PAIRS, MARGINS)] if margins else PAIRS
    corpus = _pairs_corpus(tmp_path, tiny_tok_dir, records, **({"margin_field": "margin"} if margins else {}))
    trainer, batch, corpus = _llt_trainer(tmp_path, tiny_tok_dir, tiny_model_dir, *flags, corpus=corpus)
    assert ("llt_margins" in batch) == margins
    model = trainer.model.double()
    with torch.no_grad():  # a score head far from its small initial values: rewards of either sign
        model.score.weight.mul_(40)
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()

    theirs_model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1).double()
    theirs_model.load_state_dict(model.state_dict())
    cfg = RewardConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                       center_rewards_coefficient=center, per_device_train_batch_size=len(PAIRS))
    theirs_trainer = RewardTrainer(model=theirs_model, args=cfg, processing_class=tiny_tok,
                                   train_dataset=Dataset.from_list(records))
    rows = [_sides(s) for s in read_corpus(corpus)]
    # TRL tokenizes prompt + completion + EOS as one text, as llt's pair encoder does
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in theirs_trainer.train_dataset] == rows
    inputs = DataCollatorForPreference(pad_token_id=tiny_tok.pad_token_id)(
        [{"chosen_ids": c, "rejected_ids": r, **({"margin": m} if margins else {})}
         for (c, r), m in zip(rows, MARGINS)])
    theirs_model.train()
    theirs = theirs_trainer.compute_loss(theirs_model, inputs)
    theirs.backward()
    assert abs(loss.item() - theirs.item()) < 1e-5, (loss.item(), theirs.item())
    assert abs(loss.item() - math.log(2)) > 1e-2  # the rewards differ: a real test
    ours, ref = _grads(model), _grads(theirs_model)
    assert ours.keys() == ref.keys() and "score.weight" in ours
    worst = max((ours[k] - ref[k]).abs().max().item() for k in ours)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in ours.values()) > 1e-3


def test_lora_reward_model_learns_holds_out_exports_and_scores_as_trained(tmp_path, tiny_tok_dir, tiny_model_dir,
                                                                         capsys):
    from transformers import AutoModelForSequenceClassification, pipeline

    from llt.cli import main as llt
    from llt.runs.export import export

    corpus = _pairs_corpus(tmp_path, tiny_tok_dir, PAIRS * 8, merge_data=True, max_length=128)
    trainer, _, _ = _llt_trainer(
        tmp_path, tiny_tok_dir, tiny_model_dir, "--use_lora", "true", "--lora_config_path", "configs/lora.json",
        "--max_steps", "30", "--learning_rate", "1e-3", "--logging_steps", "1", "--eval_split", "6",
        "--eval_steps", "5", "--per_device_eval_batch_size", "4", "--disable_tqdm", "true", corpus=corpus)
    trainer.evaluate()  # before the first step
    trainer.train()
    logs = trainer.state.log_history
    steps = [h for h in logs if "accuracy" in h]
    evals = [h for h in logs if "eval_accuracy" in h]
    assert abs(steps[0]["loss"] - math.log(2)) < 0.05  # a new score head of small weights: rewards near 0
    assert np.mean([s["loss"] for s in steps[-5:]]) < steps[0]["loss"] - 0.2
    assert np.mean([s["accuracy"] for s in steps[-5:]]) >= 0.9
    # 6 held-out samples, packed: every pair of them, at every evaluation
    assert evals[0]["eval_pairs"] >= 6 and {e["eval_pairs"] for e in evals} == {evals[0]["eval_pairs"]}
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] and evals[-1]["eval_accuracy"] >= evals[0]["eval_accuracy"]
    for key in ("margin", "min_reward", "mean_reward", "max_reward", "rewards/chosen", "rewards/rejected"):
        assert key in steps[-1] and f"eval_{key}" in evals[-1]

    # the rewards of a packed padding-free batch, as training reads them
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"] == 0).sum()) > 2  # packed, flat
    seqs = [s for row in batch["llt_docs"] for s in _documents(batch["input_ids"][0], row)]
    with torch.no_grad():
        chosen, rejected, _ = trainer.pair_rewards(model, dict(batch), "eval")
    trained = torch.stack([chosen, rejected], 1).reshape(-1)

    run = run_folder(tmp_path / "runs")  # its final checkpoint: the model above
    info = export(str(run), tmp_path / "rm", check=True)
    assert info["kind"] == "lora" and info["step"] == 30 and info["check_max_abs_logit_diff"] < 1e-4
    rm = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None
    with torch.no_grad():
        alone = torch.tensor([rm(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs])
    assert torch.allclose(alone, trained.float(), atol=1e-4), (alone, trained)

    # transformers' pipeline on the text of a pair, and llt score on the records
    pipe = pipeline("text-classification", model=str(tmp_path / "rm"), function_to_apply="none")
    p = PAIRS[0]
    tok = pipe.tokenizer
    text = p["prompt"] + p["chosen"] + tok.eos_token
    assert abs(pipe(text)[0]["score"] - rm(**tok(text, return_tensors="pt")).logits[0, 0].item()) < 1e-4
    src = write_jsonl(tmp_path / "held.jsonl", PAIRS)
    capsys.readouterr()
    assert llt(["score", str(tmp_path / "rm"), "--input_path", str(src)]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert len(rows) == len(PAIRS) and "accuracy" in out.err
    with torch.no_grad():
        first = rm(**tok(text, return_tensors="pt")).logits[0, 0].item()
    assert abs(rows[0]["chosen"] - first) < 1e-4
    assert sum(r["margin"] > 0 for r in rows) >= 5


def _documents(ids, docs):
    return [ids[docs == d].tolist() for d in range(int(docs.max()) + 1)]


def test_reward_refuses_corpora_it_cannot_train(tmp_path, tiny_tok_dir, tiny_model_dir, toy_corpora, capsys):
    from llt.cli import main as llt

    common = ["--model_path", str(tiny_model_dir), "--output_path", str(tmp_path / "runs"), "--use_cpu", "true",
              "--report_to", "none", "--max_steps", "1"]
    assert llt(["reward", "--data_path", str(toy_corpora["qa_packed"]), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("llt reward: error: recipes/reward.py trains on preference pairs (llt encode --encode_type "
                       "preference); --data_path holds qa corpora")
    assert llt(["score", str(tiny_model_dir), "--input_path", str(tmp_path / "none.jsonl")]) == 2
    assert "is not a reward model" in capsys.readouterr().err


def _reward(argv: list[str]) -> int:
    from llt.train.reward import main

    return main(["--deepspeed_config_path", "none", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
                 "--logging_steps", "1", "--per_device_train_batch_size", "4", "--seed", "0", *argv])


@pytest.fixture(scope="module")
def pair_corpus(tmp_path_factory, tiny_tok_dir):
    tmp = tmp_path_factory.mktemp("pairs")
    return _pairs_corpus(tmp, tiny_tok_dir, PAIRS * 4, merge_data=True, max_length=128)


def test_lora_reward_resumes_exactly(tmp_path, tiny_model_dir, pair_corpus):
    from conftest import logged_losses

    common = ["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--use_lora", "true",
              "--learning_rate", "1e-3", "--save_optimizer", "--save_steps", "3"]
    assert _reward([*common, "--output_path", str(tmp_path / "a"), "--max_steps", "6"]) == 0
    straight_run = run_folder(tmp_path / "a")
    assert _reward([*common, "--output_path", str(tmp_path / "b"), "--max_steps", "6",
                    "--load_ckpt_path", str(straight_run / "checkpoint-3")]) == 0
    straight = logged_losses(straight_run / "checkpoint-6")
    resumed = logged_losses(next(p for p in (tmp_path / "b").glob("*/checkpoint-6")))
    assert [round(straight[s], 6) for s in (4, 5, 6)] == [round(resumed[s], 6) for s in (4, 5, 6)]
    assert json.loads((straight_run / "llt_config.json").read_text())["reward_args"] == \
        {"center_rewards_coefficient": None}


def test_qlora_reward_model_trains_and_exports(tmp_path, tiny_model_dir, pair_corpus):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the qlora extra)")
    from transformers import AutoModelForSequenceClassification

    from llt.runs.export import export

    assert _reward(["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--use_lora", "true",
                    "--load_in_4bit", "true", "--lora_config_path", "configs/qlora.json", "--max_steps", "4",
                    "--learning_rate", "1e-3", "--output_path", str(tmp_path / "q")]) == 0
    run = run_folder(tmp_path / "q")
    adapter = json.loads(next(run.glob("checkpoint-4/adapter_config.json")).read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    export(str(run), tmp_path / "rm")
    rm = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    assert rm.score.weight.shape[0] == 1


@pytest.mark.slow
def test_two_process_reward_and_zero3(tmp_path, tiny_model_dir, pair_corpus):
    from tests.procs import RECIPES, launcher, run

    flags = ["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--use_cpu", "--report_to",
             "none", "--disable_tqdm", "true", "--logging_steps", "1", "--per_device_train_batch_size", "2",
             "--max_steps", "3", "--learning_rate", "1e-3"]
    launches = {
        "ddp": [*launcher("accelerate", RECIPES["reward"], 2), "--deepspeed_config_path", "none", "--use_lora", "true"],
        "zero3": [*launcher("torchrun", RECIPES["reward"]), "--deepspeed_config_path", "configs/deepspeed/zero3.json"],
        "zero3_lora": [*launcher("torchrun", RECIPES["reward"]), "--deepspeed_config_path",
                       "configs/deepspeed/zero3.json", "--use_lora", "true"],
    }
    for name, cmd in launches.items():
        run([*cmd, *flags, "--output_path", str(tmp_path / name)])
        state = json.loads(next((tmp_path / name).glob("*/checkpoint-3/trainer_state.json")).read_text())
        steps = [h for h in state["log_history"] if "accuracy" in h]
        assert len(steps) == 3 and all(math.isfinite(s["loss"]) for s in steps), (name, steps)
        from llt.runs.export import export

        info = export(str(next((tmp_path / name).glob("*/checkpoint-3"))), tmp_path / f"rm-{name}", check=True)
        assert info["check_max_abs_logit_diff"] < 1e-4, (name, info)


@pytest.mark.parametrize("record, problem", [
    ({**PAIRS[0]}, "missing field 'margin' (--margin_field"),
    ({**PAIRS[0], "margin": "big"}, "field 'margin' is 'big', not a finite number"),
    ({**PAIRS[0], "margin": float("nan")}, "field 'margin' is nan, not a finite number"),
])
def test_bad_margins_are_named(tmp_path, tiny_tok_dir, record, problem):
    import re

    from llt.errors import LltError

    src = write_jsonl(tmp_path / "p.jsonl", [{**PAIRS[1], "margin": 1.0}, record])
    with pytest.raises(LltError, match=r"p\.jsonl: line 2: " + re.escape(problem)):
        encode(tmp_path, tiny_tok_dir, [src], encode_type="preference", margin_field="margin")


def test_margins_survive_packing_and_mixing_is_refused(tmp_path, tiny_tok_dir, tiny_model_dir, capsys):
    from llt.cli import main as llt
    from llt.shards.manifest import read_manifest
    from llt.shards.reader import ShardReader

    records = [{**p, "margin": m} for p, m in zip(PAIRS, MARGINS)] * 2
    corpus = _pairs_corpus(tmp_path, tiny_tok_dir, records, margin_field="margin", merge_data=True, max_length=128)
    plain = _pairs_corpus(tmp_path, tiny_tok_dir, corpus_name="plain")
    got = {}
    for shard in read_manifest(corpus)["shards"]:
        r = ShardReader(corpus / f"{shard['name']}.idx")
        assert r.header["_version"] == "1.2" and r.header["has_margins"]
        for i in range(len(r)):
            toks, docs = r.tokens(i).tolist(), r.doc_starts(i).tolist() + [len(r.tokens(i))]
            for k, m in zip(range(0, len(docs) - 1, 2), r.doc_values("doc_margins", i)[0::2]):
                got[tuple(toks[docs[k]:docs[k + 1]])] = float(m)
    want = {tuple(c): float(np.float32(m)) for (c, _), m in zip(map(_sides, read_corpus(plain)), MARGINS)}
    assert got == want  # every pair keeps its own margin through packing
    assert llt(["reward", "--model_path", str(tiny_model_dir), "--data_path", str(corpus), str(plain),
                "--output_path", str(tmp_path / "r"), "--max_steps", "1", "--use_cpu", "true"]) == 2
    assert "mixes pair corpora with margins" in capsys.readouterr().err

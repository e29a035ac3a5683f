"""KTO: examples encoded as TRL tokenizes them with their labels stored, loss and gradients
equal to TRL's KTOTrainer to 1e-5 on the same tiny model and token ids (kto with its KL
estimate, and apo_zero_unpaired), pairs read as examples, bad input named, a LoRA run whose
rewards separate desirable from undesirable examples."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import encode, read_corpus, run_folder
from test_preference import PAIRS, _grads, _perturb

from llt.errors import LltError
from llt.toy import write_jsonl

trl = pytest.importorskip("trl", reason="TRL is the reference for the equivalence tests (pip install trl)")

EXAMPLES = [
    {"prompt": "What is 2 plus 3?", "completion": " 2 plus 3 is 5.", "label": True},
    {"prompt": "Name a colour.", "completion": " Seven.", "label": False},
    {"prompt": "Count from 1.", "completion": " 1, 2, 3.", "label": True},
    {"prompt": "Say hello.", "completion": " No.", "label": False},
    {"prompt": "What is 10 plus 20?", "completion": " 10 plus 20 is 31.", "label": False},
    {"prompt": "Is ice cold?", "completion": " Yes, ice is cold.", "label": True},
]
CHAT_EXAMPLES = [{"prompt": [{"role": "user", "content": e["prompt"]}],
                  "completion": [{"role": "assistant", "content": e["completion"]}], "label": e["label"]}
                 for e in EXAMPLES]


def _split(sample):
    """(prompt ids, completion ids) of a one-document example; only the completion is trained."""
    toks, mask, docs = sample
    assert docs == [0]
    start = int(np.argmax(mask))
    assert mask[start:].all() and not mask[:start].any()
    return toks[:start], toks[start:]


def _trl_kto(model_dir, tok, data, **kw):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    cfg = KTOConfig(output_dir="/tmp/trl-kto", report_to=[], bf16=False, use_cpu=True, max_length=None,
                    per_device_train_batch_size=len(data), **kw)
    return KTOTrainer(model=model, ref_model=copy.deepcopy(model), args=cfg, processing_class=tok,
                      train_dataset=Dataset.from_list(data))


def _labels(corpus) -> list[bool]:
    from llt.shards.manifest import read_manifest
    from llt.shards.reader import ShardReader

    out = []
    for shard in read_manifest(corpus)["shards"]:
        r = ShardReader(corpus / f"{shard['name']}.idx")
        out += [bool(x) for i in range(len(r)) for x in r.doc_labels(i)]
    return out


@pytest.mark.parametrize("records", ["standard", "conversational"])
def test_examples_are_tokenized_as_trl_does_with_their_labels(tmp_path, tiny_tok_dir, tiny_tok, tiny_model_dir,
                                                               records):
    data = EXAMPLES if records == "standard" else CHAT_EXAMPLES
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "k.jsonl", data)], encode_type="kto")
    assert manifest["encode_type"] == "kto" and manifest["stats"]["samples"] == len(data)
    ours = [_split(s) for s in read_corpus(corpus)]
    theirs = [(r["prompt_ids"], r["completion_ids"]) for r in _trl_kto(tiny_model_dir, tiny_tok, data).train_dataset]
    if records == "standard":
        assert ours == theirs
    else:  # TRL also trains the newline the template writes after <|im_end|> (see test_preference)
        for (p, c), (tp, tc) in zip(ours, theirs):
            assert p == tp and tc[:len(c)] == c and tiny_tok.decode(tc[len(c):]) == "\n"
    assert _labels(corpus) == [e["label"] for e in data]


def test_packing_keeps_each_examples_label(tmp_path, tiny_tok_dir):
    from llt.shards.verify import verify_path

    data = EXAMPLES * 3
    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "k.jsonl", data)], encode_type="kto",
                       merge_data=True, max_length=64)
    samples = read_corpus(corpus)
    assert len(samples) < len(data)  # packed
    labels, texts = _labels(corpus), []
    for toks, mask, docs in samples:
        texts += [toks[a:b] for a, b in zip(docs, docs[1:] + [len(toks)])]
    _, plain = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "k.jsonl", data)], encode_type="kto",
                      corpus_name="plain")
    by_tokens = {tuple(s[0]): lab for s, lab in zip(read_corpus(plain), _labels(plain))}
    assert len(texts) == len(data)
    assert [by_tokens[tuple(t)] for t in texts] == labels
    assert verify_path(corpus) == []


def _llt_trainer(tmp_path, tiny_tok_dir, model_dir, data, *flags):
    from llt.train.kto import build_trainer

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "k.jsonl", data)], encode_type="kto")
    trainer = build_trainer(["--model_path", str(model_dir), "--data_path", str(corpus), "--output_path",
                             str(tmp_path / "runs"), "--per_device_train_batch_size", str(len(data)),
                             "--shuffle_data", "false", "--use_cpu", "true", "--report_to", "none", "--seed", "0",
                             *flags])
    return trainer, next(iter(trainer.get_train_dataloader())), corpus


def _trl_batch(corpus, data, kl: bool):
    """TRL's collated batch for the same token ids and order: each prompt with the completion
    before it for the KL (TRL's `KL_completion_ids`)."""
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    rows = [_split(s) for s in read_corpus(corpus)]
    feats = [{"prompt_ids": p, "completion_ids": c, "label": e["label"]} for (p, c), e in zip(rows, data)]
    if kl:
        for i, f in enumerate(feats):
            f["KL_completion_ids"] = rows[i - 1][1]
    return DataCollatorForUnpairedPreference(pad_token_id=0)(feats)


@pytest.mark.parametrize("loss", ["kto", "apo_zero_unpaired"])
def test_loss_and_gradients_equal_trl(tmp_path, tiny_tok_dir, tiny_tok, tiny_model_dir, loss):
    beta, weights = 0.1, {"desirable_weight": 1.0, "undesirable_weight": 1.3}
    trainer, batch, corpus = _llt_trainer(tmp_path, tiny_tok_dir, tiny_model_dir, EXAMPLES, "--kto_loss", loss,
                                          "--beta", str(beta), "--undesirable_weight", "1.3")
    model = trainer.model
    _perturb(model)  # the policy moves away from its reference (a frozen copy of the start)
    for seed in (1, 2):  # a noisier reference: the policy's log-ratios, and so the KL estimate, are > 0
        _perturb(trainer.ref_model, seed)
    model.train()
    ours_loss = trainer.compute_loss(model, batch)
    ours_loss.backward()
    ref = _trl_kto(tiny_model_dir, tiny_tok, EXAMPLES, loss_type=loss, beta=beta, **weights)
    ref.model.load_state_dict(model.state_dict())
    ref.ref_model.load_state_dict(trainer.ref_model.state_dict())
    ref.model.train()
    theirs = ref._compute_loss(ref.model, _trl_batch(corpus, EXAMPLES, kl=loss == "kto"), False)
    theirs.backward()
    assert abs(ours_loss.item() - theirs.item()) < 1e-5, (ours_loss.item(), theirs.item())
    if loss == "kto":
        assert ref._metrics["train"]["kl"][-1] > 1e-3  # the KL term took part
        assert abs(trainer._train_metrics["kl"][-1] - ref._metrics["train"]["kl"][-1]) < 1e-5
    ours, their_grads = _grads(model), _grads(ref.model)
    assert ours.keys() == their_grads.keys()
    worst = max((ours[k] - their_grads[k]).abs().max().item() for k in ours)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in ours.values()) > 1e-4


def test_pairs_read_as_examples_never_pair_a_prompt_with_its_own_completion(tmp_path, tiny_tok_dir):
    """--pairs_as_kto: chosen desirable, rejected undesirable; the KL documents take the
    completion of the pair before (TRL's rotation by one would give a rejected side its own
    prompt's chosen completion)."""
    from llt.data.collate import PaddingFreeCollator
    from llt.data.dataset import ShardDataset
    from llt.train.kto.collate import KtoCollator, doc_parts

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", PAIRS)], encode_type="preference")
    ds = ShardDataset(corpus)
    feats = [ds[i] for i in range(4)]
    batch = KtoCollator(PaddingFreeCollator(doc_ids=True), pairs=True, kl=True)(feats)
    assert batch["llt_kto_labels"].tolist() == [True, False] * 4
    docs = [d for f in feats for d in doc_parts(f)]
    kl = batch["llt_kl"]
    starts = (kl["position_ids"][0] == 0).nonzero().flatten().tolist() + [kl["input_ids"].shape[1]]
    got = [kl["input_ids"][0, a:b].tolist() for a, b in zip(starts, starts[1:])]
    assert len(got) == 8
    for i, seq in enumerate(got):
        prompt, completion = docs[i][0].tolist(), docs[(i - 2) % 8][1].tolist()
        assert seq == prompt + completion
        assert docs[(i - 2) % 8][0].tolist() != prompt  # another record's completion
    trained = kl["labels"][0] != -100
    assert trained.sum().item() == sum(int((f["labels"] != -100).sum()) for f in feats)


def _kto(argv) -> int:
    from llt.train.kto import main

    return main(["--deepspeed_config_path", "none", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
                 "--logging_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
                 "--seed", "0", *argv])


@pytest.fixture(scope="module")
def kto_corpus(tmp_path_factory, tiny_tok_dir):
    tmp = tmp_path_factory.mktemp("kto")
    _, corpus = encode(tmp, tiny_tok_dir, [write_jsonl(tmp / "k.jsonl", EXAMPLES * 4)], encode_type="kto")
    return corpus


def test_methods_refuse_the_corpora_they_cannot_train(tmp_path, tiny_tok_dir, tiny_model_dir, kto_corpus,
                                                     toy_corpora, capsys):
    from llt.cli import main as llt

    _, pairs = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", PAIRS)], encode_type="preference")
    common = ["--model_path", str(tiny_model_dir), "--output_path", str(tmp_path / "r"), "--max_steps", "1",
              "--use_cpu", "true"]
    cases = [
        (["train", "--data_path", str(kto_corpus)], "holds KTO examples (encode_type kto), whose undesirable"),
        (["dpo", "--data_path", str(kto_corpus)], "train KTO examples with llt kto"),
        (["reward", "--data_path", str(kto_corpus)], "train KTO examples with llt kto"),
        (["kto", "--data_path", str(pairs)], "add --pairs_as_kto"),
        (["kto", "--data_path", str(toy_corpora["qa_packed"])], "--data_path holds qa corpora"),
        (["kto", "--data_path", str(kto_corpus), "--per_device_train_batch_size", "1"],
         "--per_device_train_batch_size 1: KTO estimates its KL term"),
    ]
    for argv, message in cases:
        assert llt([*argv, *common]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert _kto(["--model_path", str(tiny_model_dir), "--data_path", str(pairs), "--pairs_as_kto", "--max_steps",
                 "1", "--output_path", str(tmp_path / "p")]) == 0


@pytest.mark.parametrize("record, problem", [
    ({"prompt": "x", "completion": " y", "label": 1}, "field 'label' is 1 (int), not a boolean"),
    ({"prompt": "x", "completion": " y", "label": "true"}, "field 'label' is 'true' (str), not a boolean"),
    ({"prompt": "x", "completion": " y"}, "missing field 'label'"),
    ({"completion": " y", "label": True}, "missing field 'prompt'"),
    ({"prompt": "x", "completion": 3, "label": True}, "field 'completion' must be a string or a message list"),
    ({"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "user", "content": "y"}], "label": True},
     "completion: the completion has no assistant message"),
])
def test_bad_examples_are_named(tmp_path, tiny_tok_dir, record, problem):
    src = write_jsonl(tmp_path / "k.jsonl", [EXAMPLES[0], record])
    with pytest.raises(LltError, match=r"k\.jsonl: line 2: " + re.escape(problem)):
        encode(tmp_path, tiny_tok_dir, [src], encode_type="kto")
    assert not (tmp_path / "out" / "c").exists()  # nothing half-written


def test_an_empty_completion_is_skipped_and_counted_or_refused_with_strict(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "k.jsonl", [EXAMPLES[0], {"prompt": "x", "completion": "", "label": False}])
    m, _ = encode(tmp_path, tiny_tok_dir, [src], encode_type="kto")
    assert m["stats"]["samples"] == 1 and m["stats"]["skipped_empty"] == 1
    with pytest.raises(LltError, match=r"line 2: an empty completion \(--strict"):
        encode(tmp_path, tiny_tok_dir, [src], encode_type="kto", strict=True, corpus_name="s")


def _kto_shard(tmp_path, labels):
    from llt.shards.writer import SampleBatch, ShardWriter

    w = ShardWriter(tmp_path / "s", "uint16", 100, True, {"encode_type": "kto"})
    w.add(SampleBatch(np.arange(10, dtype=np.uint32), np.array([10]), np.array([2]), np.array([0, 5]),
                      np.array([2]), np.array([[2, 5], [7, 10]]), {"doc_labels": np.array(labels, np.uint8)}))
    done = w.close()
    done.tmp_bin.rename(tmp_path / "s.bin")
    done.tmp_idx.rename(tmp_path / "s.idx")
    return tmp_path / "s.idx"


def test_the_format_stores_labels_and_refuses_what_it_does_not_know(tmp_path):
    from llt.shards.format import KTO_VERSION, PREFIX, ShardFormatError
    from llt.shards.reader import ShardReader
    from llt.shards.verify import check_shard

    r = ShardReader(_kto_shard(tmp_path, [1, 0]))
    assert r.header["_version"] == "%d.%d" % KTO_VERSION and r.doc_labels(0).tolist() == [True, False]
    assert check_shard(r) == []
    (tmp_path / "bad").mkdir()
    assert "sample 0: document label 2 is not 0 or 1" in check_shard(ShardReader(_kto_shard(tmp_path / "bad", [1, 2])))[0]
    # a KTO header without its labels is refused, naming the file
    raw = (tmp_path / "s.idx").read_bytes()
    magic, major, minor, n = PREFIX.unpack(raw[:PREFIX.size])
    header = json.loads(raw[PREFIX.size:PREFIX.size + n])
    del header["arrays"]["doc_labels"]
    body = json.dumps(header).encode().ljust(n)
    (tmp_path / "s.idx").write_bytes(raw[:PREFIX.size] + body + raw[PREFIX.size + n:])
    with pytest.raises(ShardFormatError, match=r"s\.idx: damaged header: arrays \['doc_labels'\] missing"):
        ShardReader(tmp_path / "s.idx")


def test_inspect_labels_the_examples(tmp_path, tiny_tok_dir, capsys):
    from llt.cli import main as llt

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "k.jsonl", EXAMPLES[:2])], encode_type="kto")
    assert llt(["inspect", str(corpus), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "----- desirable -----\nWhat is 2 plus 3?[[ 2 plus 3 is 5.<|im_end|>]]" in out
    assert "----- undesirable -----\nName a colour.[[ Seven.<|im_end|>]]" in out


def _history(run) -> list[dict]:
    state = json.loads(max(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime).read_text())
    return state["log_history"]


def test_lora_kto_starts_at_one_half_separates_the_examples_and_exports(tmp_path, tiny_tok_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from llt.cli import main as llt

    data = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in PAIRS for side in ("chosen", "rejected")] * 4
    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "k.jsonl", data)], encode_type="kto")
    out = tmp_path / "runs"
    assert _kto(["--model_path", str(tiny_model_dir), "--data_path", str(corpus), "--output_path", str(out),
                 "--use_lora", "true", "--max_steps", "30", "--per_device_train_batch_size", "8",
                 "--eval_split", "0.25", "--eval_steps", "15"]) == 0
    run = run_folder(out)
    history = _history(run)
    steps = [h for h in history if "kl" in h and "loss" in h]
    evals = [h for h in history if "eval_rewards/margins" in h]
    assert abs(steps[0]["loss"] - 0.5) < 1e-4  # the adapter starts at zero: every 1 - σ(0)
    assert np.mean([s["loss"] for s in steps[-5:]]) < steps[0]["loss"] - 0.02
    assert np.mean([s["rewards/margins"] for s in steps[-5:]]) > 0.05
    assert evals[-1]["eval_rewards/chosen"] > evals[-1]["eval_rewards/rejected"]
    print(json.dumps({"first": steps[0], "last": steps[-1], "evals": evals}))
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl"):
        assert key in steps[-1] and math.isfinite(steps[-1][key])
    assert llt(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))


def test_lora_kto_resumes_exactly(tmp_path, tiny_model_dir, kto_corpus):
    from conftest import logged_losses

    common = ["--model_path", str(tiny_model_dir), "--data_path", str(kto_corpus), "--use_lora", "true",
              "--save_optimizer", "--save_steps", "3"]
    assert _kto([*common, "--output_path", str(tmp_path / "a"), "--max_steps", "6"]) == 0
    straight_run = run_folder(tmp_path / "a")
    assert _kto([*common, "--output_path", str(tmp_path / "b"), "--max_steps", "6",
                 "--load_ckpt_path", str(straight_run / "checkpoint-3")]) == 0
    straight = logged_losses(straight_run / "checkpoint-6")
    resumed = logged_losses(next(p for p in (tmp_path / "b").glob("*/checkpoint-6")))
    assert [round(straight[s], 6) for s in (4, 5, 6)] == [round(resumed[s], 6) for s in (4, 5, 6)]
    assert json.loads((straight_run / "llt_config.json").read_text())["kto_args"]["kto_loss"] == "kto"


@pytest.mark.slow
def test_two_process_kto_and_zero3_lora(tmp_path, tiny_model_dir, kto_corpus):
    from tests.procs import RECIPES, launcher, run

    flags = ["--model_path", str(tiny_model_dir), "--data_path", str(kto_corpus), "--use_cpu", "--report_to",
             "none", "--disable_tqdm", "true", "--logging_steps", "1", "--per_device_train_batch_size", "2",
             "--max_steps", "3", "--learning_rate", "1e-3", "--use_lora", "true"]
    launches = {
        "ddp": [*launcher("accelerate", RECIPES["kto"], 2), "--deepspeed_config_path", "none"],
        "zero3_lora": [*launcher("torchrun", RECIPES["kto"]), "--deepspeed_config_path",
                       "configs/deepspeed/zero3.json"],
    }
    for name, cmd in launches.items():
        run([*cmd, *flags, "--output_path", str(tmp_path / name)])
        steps = [h for h in _history(next((tmp_path / name).glob("*"))) if "kl" in h]
        assert len(steps) == 3 and all(math.isfinite(s["loss"]) and s["kl"] >= 0 for s in steps), (name, steps)


def _move(model, seed=0):
    """Perturb the trained parameters only (a LoRA run's adapter; every weight in a full one):
    the policy moves away from its reference, which stays the starting model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


@pytest.mark.parametrize("lora", [True, False])
def test_precomputed_reference_equals_the_live_one(tmp_path, tiny_tok_dir, tiny_model_dir, lora):
    """--precompute_ref_logps: the same loss and gradients as computing the reference every
    step (adapter disabled, or the frozen copy), with the same fixed mismatched completions;
    the values are saved in the run folder."""
    from llt.train.kto import build_trainer

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "k.jsonl", EXAMPLES * 2)], encode_type="kto")
    results = []
    for precompute in (False, True):
        out = tmp_path / f"runs-{precompute}"
        trainer = build_trainer(["--model_path", str(tiny_model_dir), "--data_path", str(corpus), "--output_path",
                                 str(out), "--per_device_train_batch_size", "4", "--use_cpu", "true",
                                 "--report_to", "none", "--seed", "0", *(["--use_lora", "true"] if lora else []),
                                 *(["--precompute_ref_logps"] if precompute else [])])
        assert (trainer.ref_model is None) == (lora or precompute)
        if not precompute:  # the live reference, with the fixed mismatched completions precomputing uses
            trainer.data_collator.fixed = trainer.train_dataset.partner = True
        batch = next(iter(trainer.get_train_dataloader()))
        model = trainer.model.train()
        trainer.compute_loss(model, copy.deepcopy(batch))  # step 0: precomputes, from the starting model
        _move(model, 4)  # a move that raises the mismatched log-probs: the KL estimate is not clamped to 0
        model.train()
        for m in model.modules():  # LoRA's dropout draws from the RNG, which precomputing's loader moved
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results.append((loss.item(), _grads(model), trainer._train_metrics["kl"][-1]))
        assert any(out.glob("*/ref_logps.npz")) == precompute
    (a, ga, kla), (b, gb, klb) = results
    assert abs(a - b) < 1e-6 and abs(kla - klb) < 1e-6 and kla > 0, (a, b, kla, klb)
    assert max((ga[k] - gb[k]).abs().max().item() for k in ga) < 1e-6


def test_qlora_kto_trains_and_exports(tmp_path, tiny_model_dir, kto_corpus):
    """QLoRA: the 4-bit base with its adapter disabled is the reference."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the qlora extra)")
    from transformers import AutoModelForCausalLM

    from llt.runs.export import export

    assert _kto(["--model_path", str(tiny_model_dir), "--data_path", str(kto_corpus), "--use_lora", "true",
                 "--load_in_4bit", "true", "--lora_config_path", "configs/qlora.json", "--max_steps", "4",
                 "--output_path", str(tmp_path / "q")]) == 0
    run = run_folder(tmp_path / "q")
    steps = [h for h in _history(run) if "kl" in h and "loss" in h]
    assert len(steps) == 4 and abs(steps[0]["loss"] - 0.5) < 1e-4 and all(math.isfinite(s["loss"]) for s in steps)
    export(str(run), tmp_path / "merged")
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))

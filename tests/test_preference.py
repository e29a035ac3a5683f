"""Preference tuning: pair encoding as TRL tokenizes, and loss and gradients equal to TRL's
trainers (DPOTrainer for sigmoid and ipo, CPOTrainer for simpo, ORPOTrainer) to 1e-5 on the
same tiny model and pairs; a DPO run starts at ln 2 and learns."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import encode, read_corpus, run_folder

from llt.errors import LltError
from llt.toy import write_jsonl

trl = pytest.importorskip("trl", reason="TRL is the reference for the equivalence tests (pip install trl)")

PAIRS = [
    {"prompt": "What is 2 plus 3?", "chosen": " 2 plus 3 is 5.", "rejected": " It is 6, I think."},
    {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " Seven."},
    {"prompt": "Count from 1.", "chosen": " 1, 2, 3.", "rejected": " 3, 2, 1, 0, -1."},
    {"prompt": "Say hello.", "chosen": " Hello there, how are you?", "rejected": " No."},
    {"prompt": "What is 10 plus 20?", "chosen": " 30.", "rejected": " 10 plus 20 is 31."},
    {"prompt": "Is ice cold?", "chosen": " Yes, ice is cold.", "rejected": " No, it is hot."},
]
CHAT_PAIRS = [
    {"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
     "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in PAIRS]
IMPLICIT_PAIRS = [  # the prompt is what the two sides share
    {"chosen": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}],
     "rejected": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["rejected"]}]}
    for p in PAIRS]
RECORDS = {"standard": PAIRS, "conversational": CHAT_PAIRS, "implicit": IMPLICIT_PAIRS}


def _sides(sample):
    """(prompt ids, chosen completion ids, rejected completion ids) of a pair sample."""
    toks, mask, docs = sample
    c, r = toks[:docs[1]], toks[docs[1]:]
    mc, mr = mask[:docs[1]], mask[docs[1]:]
    start = int(np.argmax(mc))
    assert int(np.argmax(mr)) == start and c[:start] == r[:start]  # one prompt, stored twice
    assert mc[start:].all() and mr[start:].all()  # the completions, and only they, are trained
    return c[:start], c[start:], r[start:]


def _trl_dpo(model_dir, tok, loss_type, **kw):
    from trl import DPOConfig, DPOTrainer
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    cfg = DPOConfig(output_dir="/tmp/trl-dpo", loss_type=[loss_type], beta=kw.get("beta", 0.1), report_to=[], bf16=False,
                    per_device_train_batch_size=len(PAIRS), max_length=None, use_cpu=True, **kw.get("extra", {}))
    return DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=cfg, processing_class=tok,
                      train_dataset=Dataset.from_list(kw.get("data", PAIRS)))


@pytest.mark.parametrize("records", list(RECORDS))
def test_pairs_are_tokenized_as_trl_does(tmp_path, tiny_tok_dir, tiny_tok, tiny_model_dir, records):
    data = RECORDS[records]
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", data)],
                              encode_type="preference")
    ours = [_sides(s) for s in read_corpus(corpus)]
    trainer = _trl_dpo(tiny_model_dir, tiny_tok, "sigmoid", data=data)
    theirs = [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset]
    if records == "standard":
        assert ours == theirs
    else:
        # The chat rule trains a turn up to its end-of-turn token; TRL also trains the newline
        # the template writes after <|im_end|>, which a model never generates.
        for (p, c, r), (tp, tc, tr) in zip(ours, theirs):
            assert p == tp and tc[:len(c)] == c and tr[:len(r)] == r
            assert tiny_tok.decode(tc[len(c):]) == "\n" and tiny_tok.decode(tr[len(r):]) == "\n"
    assert manifest["stats"]["samples"] == len(data)


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def _llt_trainer(tmp_path, tiny_tok_dir, model_dir, *flags):
    from llt.train.preference import build_trainer

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", PAIRS)], encode_type="preference")
    trainer = build_trainer(["--model_path", str(model_dir), "--data_path", str(corpus), "--output_path",
                             str(tmp_path / "runs"), "--per_device_train_batch_size", str(len(PAIRS)),
                             "--use_cpu", "true", "--report_to", "none", "--seed", "0", *flags])
    return trainer, next(iter(trainer.get_train_dataloader())), corpus


def _grads(model) -> dict[str, torch.Tensor]:
    return {n.split("base_model.model.")[-1]: p.grad.detach().clone()
            for n, p in model.named_parameters() if p.grad is not None}


def _trl_inputs(corpus, kind):
    """TRL's batch for the same token ids: DPO's collator, or CPO/ORPO's concatenated form."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rows = [_sides(s) for s in read_corpus(corpus)]
    if kind == "dpo":
        return DataCollatorForPreference(pad_token_id=0)(
            [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in rows])
    width = max(len(p) + max(len(c), len(r)) for p, c, r in rows)
    batch = {}
    for side, k in (("chosen", 1), ("rejected", 2)):
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        att = torch.zeros_like(ids)
        lab = torch.full_like(ids, -100)
        for i, row in enumerate(rows):
            seq = row[0] + row[k]
            ids[i, :len(seq)], att[i, :len(seq)] = torch.tensor(seq), 1
            lab[i, len(row[0]):len(seq)] = torch.tensor(row[k])
        batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": att, f"{side}_labels": lab})
    return batch


def _trl_loss(kind, model_dir, tok, policy_state, corpus, beta):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    if kind in ("sigmoid", "ipo"):
        trainer = _trl_dpo(model_dir, tok, kind, beta=beta)
        trainer.model.load_state_dict(policy_state)
        return trainer.model, trainer._compute_loss(trainer.model, _trl_inputs(corpus, "dpo"), False)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).double()
    model.load_state_dict(policy_state)
    data = Dataset.from_list(PAIRS)
    if kind == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        cfg = CPOConfig(output_dir="/tmp/trl-cpo", loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=0.3,
                        report_to=[], use_cpu=True, bf16=False)
        trainer = CPOTrainer(model=model, args=cfg, processing_class=tok, train_dataset=data)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        cfg = ORPOConfig(output_dir="/tmp/trl-orpo", beta=beta, report_to=[], use_cpu=True, bf16=False)
        trainer = ORPOTrainer(model=model, args=cfg, processing_class=tok, train_dataset=data)
    return model, trainer.get_batch_loss_metrics(model, _trl_inputs(corpus, "pairs"))[0]


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "simpo", "orpo"])
def test_loss_and_gradients_equal_trl(tmp_path, tiny_tok_dir, tiny_tok, tiny_model_dir, kind):
    # TRL's configs default to bf16 (off here: both sides in the model's dtype). TRL's
    # DPOTrainer scores tokens in float32 (its fused LM head), CPO and ORPO in the model's
    # dtype: float64 there. In float32, log-probs of ~-100 carry ~1e-5 of rounding: β = 0.1
    # (TRL's default) and, for IPO, β = 1 keep the loss's share of it below 1e-5.
    beta = {"sigmoid": 0.1, "ipo": 1.0, "simpo": 0.7, "orpo": 0.25}[kind]
    wide = kind in ("simpo", "orpo")
    flags = ["--pref_loss", kind, "--beta", str(beta), "--simpo_gamma", "0.3", "--orpo_lambda", str(beta)]
    trainer, batch, corpus = _llt_trainer(tmp_path, tiny_tok_dir, tiny_model_dir, *flags)
    # float64 on both sides: log-probs of ~-100 in float32 carry 1e-5 of rounding, as much as
    # the tolerance; in float64 any difference left is a difference in the computation
    model = trainer.model.double() if wide else trainer.model
    _perturb(model)  # the policy moves away from its reference (a frozen copy of the start)
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    theirs_model, theirs = _trl_loss(kind, tiny_model_dir, tiny_tok, model.state_dict(), corpus, beta)
    theirs.backward()
    assert abs(loss.item() - theirs.item()) < 1e-5, (loss.item(), theirs.item())
    if kind in ("sigmoid", "ipo"):
        assert abs(loss.item() - math.log(2)) > 1e-3  # the perturbation made it a real test
    ours, ref = _grads(model), _grads(theirs_model)
    assert ours.keys() == ref.keys()
    worst = max((ours[k] - ref[k]).abs().max().item() for k in ours)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in ours.values()) > 1e-3


def test_lora_dpo_starts_at_ln2_learns_and_exports(tmp_path, tiny_tok_dir, tiny_model_dir):
    from llt.cli import main as llt

    data = PAIRS * 6
    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", data)],
                       encode_type="preference", merge_data=True, max_length=256)
    out = tmp_path / "runs"
    assert llt(["dpo", "--model_path", str(tiny_model_dir), "--data_path", str(corpus), "--output_path", str(out),
                "--use_lora", "true", "--lora_config_path", "configs/lora.json", "--max_steps", "25",
                "--per_device_train_batch_size", "6", "--learning_rate", "3e-3", "--logging_steps", "1",
                "--use_cpu", "true", "--report_to", "none", "--seed", "0"]) == 0
    run = run_folder(out)
    logs = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()] \
        if (run / "history.jsonl").is_file() else []
    state = json.loads(next(run.glob("checkpoint-*/trainer_state.json")).read_text())
    steps = [h for h in state["log_history"] if "rewards/accuracies" in h]
    assert abs(steps[0]["loss"] - math.log(2)) < 1e-4  # the adapter starts at zero: policy = reference
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.05
    assert np.mean([s["rewards/accuracies"] for s in steps[-5:]]) > np.mean([s["rewards/accuracies"] for s in steps[:3]])
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert key in steps[-1]
    assert llt(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    del logs


def test_sft_refuses_pairs_and_dpo_refuses_sft_corpora(tmp_path, tiny_tok_dir, tiny_model_dir, toy_corpora):
    from llt.cli import main as llt

    _, pairs = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", PAIRS)], encode_type="preference")
    common = ["--model_path", str(tiny_model_dir), "--output_path", str(tmp_path / "r"), "--max_steps", "1",
              "--use_cpu", "true"]
    assert llt(["train", "--data_path", str(pairs), *common]) == 2
    assert llt(["dpo", "--data_path", str(toy_corpora["qa_packed"]), *common]) == 2


def test_bad_pair_records_are_named(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "p.jsonl", [PAIRS[0], {"prompt": "x", "chosen": "a", "rejected": 3}])
    with pytest.raises(LltError, match=r"p\.jsonl: line 2: fields 'chosen' and 'rejected' must both be strings"):
        encode(tmp_path, tiny_tok_dir, [src], encode_type="preference")


def _pair_shard(tmp_path, docs, spans):
    from llt.shards.reader import ShardReader
    from llt.shards.writer import SampleBatch, ShardWriter

    w = ShardWriter(tmp_path / "s", "uint16", 100, True, {"encode_type": "preference"})
    w.add(SampleBatch(np.arange(10, dtype=np.uint32), np.array([10]), np.array([len(docs)]), np.array(docs),
                      np.array([len(spans)]), np.array(spans).reshape(-1, 2)))
    done = w.close()
    done.tmp_bin.rename(tmp_path / "s.bin")
    done.tmp_idx.rename(tmp_path / "s.idx")
    return ShardReader(tmp_path / "s.idx")


@pytest.mark.parametrize("docs, spans, problem", [
    ([0, 5], [[2, 5], [7, 10]], None),
    ([0, 4, 7], [[2, 4], [5, 7], [8, 10]], "sample 0 has 3 documents"),
    ([0, 5], [[2, 5]], "sample 0: a rejected side has no trained completion token"),
])
def test_verify_knows_pairs(tmp_path, docs, spans, problem):
    from llt.shards.format import PAIRS_VERSION
    from llt.shards.verify import check_shard

    r = _pair_shard(tmp_path, docs, spans)
    assert r.header["_version"] == "%d.%d" % PAIRS_VERSION  # 1.1: preference pairs
    found = check_shard(r)
    assert (problem is None and not found) or (problem and problem in found[0]), found


def test_inspect_labels_the_sides(tmp_path, tiny_tok_dir, capsys):
    from llt.cli import main as llt

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", PAIRS[:2])], encode_type="preference")
    assert llt(["inspect", str(corpus), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "----- chosen (pair 1) -----\nWhat is 2 plus 3?[[ 2 plus 3 is 5.<|im_end|>]]" in out
    assert "----- rejected (pair 1) -----\nWhat is 2 plus 3?[[ It is 6, I think.<|im_end|>]]" in out


def test_overlong_pairs_are_dropped_or_cut_side_by_side(tmp_path, tiny_tok_dir):
    long = {"prompt": "Say hello.", "chosen": " hello" * 40, "rejected": " bye" * 40}
    src = write_jsonl(tmp_path / "p.jsonl", [PAIRS[1], long])
    m, _ = encode(tmp_path, tiny_tok_dir, [src], encode_type="preference", max_length=40, corpus_name="drop")
    assert m["stats"]["dropped_overlong"] == 1 and m["stats"]["samples"] == 1
    m, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="preference", max_length=40,
                       overlong="truncate", corpus_name="cut")
    assert m["stats"]["truncated"] == 1
    toks, mask, docs = read_corpus(corpus)[1]
    assert docs == [0, 20] and len(toks) == 40 and mask[:20].any() and mask[20:].any()


def _dpo(argv) -> int:
    from llt.train.preference import main

    return main(["--deepspeed_config_path", "none", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
                 "--logging_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
                 "--seed", "0", *argv])


@pytest.fixture(scope="module")
def pair_corpus(tmp_path_factory, tiny_tok_dir):
    tmp = tmp_path_factory.mktemp("pairs")
    _, corpus = encode(tmp, tiny_tok_dir, [write_jsonl(tmp / "p.jsonl", PAIRS * 4)], encode_type="preference",
                       merge_data=True, max_length=128)
    return corpus


def test_lora_dpo_resumes_exactly(tmp_path, tiny_model_dir, pair_corpus):
    from conftest import logged_losses

    common = ["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--use_lora", "true",
              "--save_optimizer", "--save_steps", "3"]
    assert _dpo([*common, "--output_path", str(tmp_path / "a"), "--max_steps", "6"]) == 0
    straight_run = run_folder(tmp_path / "a")
    assert _dpo([*common, "--output_path", str(tmp_path / "b"), "--max_steps", "6",
                 "--load_ckpt_path", str(straight_run / "checkpoint-3")]) == 0
    straight = logged_losses(straight_run / "checkpoint-6")
    resumed = logged_losses(next(p for p in (tmp_path / "b").glob("*/checkpoint-6")))
    assert [round(straight[s], 6) for s in (4, 5, 6)] == [round(resumed[s], 6) for s in (4, 5, 6)]


def test_full_dpo_precomputed_reference_equals_the_frozen_copy(tmp_path, tiny_model_dir, pair_corpus):
    from conftest import logged_losses

    common = ["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--max_steps", "3",
              "--learning_rate", "1e-3"]
    assert _dpo([*common, "--output_path", str(tmp_path / "copy")]) == 0
    assert _dpo([*common, "--output_path", str(tmp_path / "pre"), "--precompute_ref_logps", "true",
                 "--eval_split", "0.2"]) == 0
    run = run_folder(tmp_path / "pre")
    cache = np.load(run / "ref_logps.npz")
    assert len(cache["train_ids"]) > 0 and len(cache["eval_ids"]) > 0
    a = logged_losses(run_folder(tmp_path / "copy") / "checkpoint-3")
    b = logged_losses(run / "checkpoint-3")
    assert abs(a[1] - math.log(2)) < 1e-6 and abs(b[1] - math.log(2)) < 1e-6


@pytest.mark.slow
def test_two_process_lora_dpo_and_zero3(tmp_path, tiny_model_dir, pair_corpus):
    from tests.procs import RECIPES, launcher, run

    flags = ["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--use_cpu", "--report_to",
             "none", "--disable_tqdm", "true", "--logging_steps", "1", "--per_device_train_batch_size", "2",
             "--use_lora", "true", "--max_steps", "3", "--learning_rate", "3e-3"]
    launches = {
        "ddp": [*launcher("accelerate", RECIPES["dpo"], 2), "--deepspeed_config_path", "none"],
        "zero3": [*launcher("torchrun", RECIPES["dpo"]), "--deepspeed_config_path", "configs/deepspeed/zero3.json"],
    }
    for name, cmd in launches.items():
        run([*cmd, *flags, "--output_path", str(tmp_path / name)])
        state = json.loads(next((tmp_path / name).glob("*/checkpoint-3/trainer_state.json")).read_text())
        steps = [h for h in state["log_history"] if "rewards/margins" in h]
        assert len(steps) == 3 and abs(steps[0]["loss"] - math.log(2)) < 1e-4, (name, steps[0])


def test_dpo_mixes_pair_corpora_and_evaluates_held_out_pairs(tmp_path, tiny_model_dir, pair_corpus, tiny_tok_dir):
    from conftest import logged_losses

    _, other = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "q.jsonl", CHAT_PAIRS * 3)],
                      encode_type="preference", corpus_name="chat")
    assert _dpo(["--model_path", str(tiny_model_dir), "--data_path", f"a={pair_corpus}:1", f"b={other}:3",
                 "--output_path", str(tmp_path / "r"), "--use_lora", "true", "--max_steps", "4",
                 "--eval_split", "0.2", "--eval_steps", "2"]) == 0
    state = json.loads(next((tmp_path / "r").glob("*/checkpoint-4/trainer_state.json")).read_text())
    evals = [h for h in state["log_history"] if "eval_rewards/accuracies" in h]
    assert evals and all(h["eval_pairs"] > 0 for h in evals)
    assert any("tokens_seen/b" in h for h in state["log_history"])
    assert len(logged_losses(next((tmp_path / "r").glob("*/checkpoint-4")))) == 4


def test_gradient_accumulation_matches_one_large_batch(tmp_path, tiny_model_dir, tiny_tok_dir):
    """The loss is a mean over a micro-batch's pairs, divided by the accumulation steps, as
    TRL: two micro-batches of 2 pairs step the weights as one batch of 4 does."""
    from safetensors.torch import load_file

    _, corpus = encode(tmp_path, tiny_tok_dir, [write_jsonl(tmp_path / "p.jsonl", PAIRS[:4])], encode_type="preference")
    common = ["--model_path", str(tiny_model_dir), "--data_path", str(corpus), "--max_steps", "1",
              "--shuffle_data", "false", "--learning_rate", "1e-2", "--optim", "sgd"]
    assert _dpo([*common, "--output_path", str(tmp_path / "one"), "--per_device_train_batch_size", "4"]) == 0
    assert _dpo([*common, "--output_path", str(tmp_path / "two"), "--per_device_train_batch_size", "2",
                 "--gradient_accumulation_steps", "2"]) == 0
    a = load_file(next((tmp_path / "one").glob("*/checkpoint-1/model.safetensors")))
    b = load_file(next((tmp_path / "two").glob("*/checkpoint-1/model.safetensors")))
    start = load_file(tiny_model_dir / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # the step moved them


def test_precomputed_reference_is_reused_on_resume(tmp_path, tiny_model_dir, pair_corpus):
    common = ["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--precompute_ref_logps", "true",
              "--save_optimizer", "--save_steps", "2", "--output_path", str(tmp_path / "r")]
    assert _dpo([*common, "--max_steps", "2"]) == 0
    run = run_folder(tmp_path / "r")
    cache = run / "ref_logps.npz"
    stamp = cache.stat().st_mtime_ns
    assert _dpo([*common, "--max_steps", "4", "--load_ckpt_path", str(run)]) == 0
    assert cache.stat().st_mtime_ns == stamp  # loaded, not computed again (the policy has moved)
    resumed = next(p for p in (tmp_path / "r").iterdir() if (p / "checkpoint-4").is_dir())
    assert (resumed / "ref_logps.npz").read_bytes() == cache.read_bytes()  # the new folder has them too


@pytest.mark.parametrize("flag", [["--chunked_loss", "false"], ["--use_liger_kernel", "true"]])
def test_a_flag_that_replaces_llts_forward_is_refused_before_any_data_work(tmp_path, tiny_model_dir, capsys, flag):
    """The pair log-probs come from llt's own forward; a flag that swaps it out would fail
    at the first step, so it is refused first, with the reason (the data path does not even
    exist: no data work happened)."""
    rc = _dpo(["--model_path", str(tiny_model_dir), "--data_path", str(tmp_path / "nowhere"), "--output_path",
               str(tmp_path / "runs"), *flag])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"llt dpo: error: {flag[0]}") and "log-probs" in err, err
    assert not (tmp_path / "runs").exists()


def test_the_methods_are_peers_listed_once():
    """Each method is its own folder, found through the one list; none is a branch in another."""
    from llt.train.grpo.method import Grpo
    from llt.train.kto.method import Kto
    from llt.train.methods import METHODS, get_method
    from llt.train.preference.method import Preference
    from llt.train.reward.method import Reward
    from llt.train.sft.method import SFT

    assert {name: type(get_method(name)) for name in METHODS} == {"train": SFT, "dpo": Preference, "reward": Reward,
                                                                      "kto": Kto, "grpo": Grpo}
    assert get_method("dpo").collator_options() == {"pairs": True} and get_method("train").collator_options() == {}
    assert get_method("reward").head == "reward" and get_method("dpo").head == "causal"


def test_a_user_callback_sees_dpo_metrics_and_stops_the_run(tmp_path, tiny_model_dir, pair_corpus):
    """Callbacks named with --callbacks work for every method: here DPO's metrics reach them."""
    cb = tmp_path / "cb.py"
    cb.write_text("import json\nfrom transformers import TrainerCallback\n\n"
                  "class Rec(TrainerCallback):\n    def __init__(self, out):\n        self.out = out\n\n"
                  "    def on_log(self, args, state, control, logs=None, **kw):\n"
                  "        open(self.out, 'a').write(json.dumps(logs) + '\\n')\n"
                  "        control.should_training_stop = state.global_step >= 2\n")
    log = tmp_path / "log.jsonl"
    assert _dpo(["--model_path", str(tiny_model_dir), "--data_path", str(pair_corpus), "--use_lora", "true",
                 "--output_path", str(tmp_path / "runs"), "--max_steps", "6",
                 "--callbacks", f'{cb}:Rec={{"out": "{log}"}}']) == 0
    rows = [json.loads(x) for x in log.read_text().splitlines() if '"loss"' in x]
    assert len(rows) == 2 and all("rewards/accuracies" in r and "trained_tokens_per_second" in r for r in rows)
    assert [c.name for c in (run_folder(tmp_path / "runs")).glob("checkpoint-*")] == ["checkpoint-2"]

"""Data mixing by token weights, held-out evaluation, run reports, TensorBoard and `llt plot`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llt.data.dataset import DataError, ShardDataset
from llt.data.corpora import EpochPlan, parse_corpora
from llt.data.heldout import split_eval
from tests.conftest import logged_losses, run_folder, train


def _args(model, out, *extra):
    return ["--model_path", str(model), "--output_path", str(out), "--per_device_train_batch_size", "8",
            "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "7", *extra]


@pytest.mark.parametrize("entries,message", [
    (["a=x:0.5", "b=y"], "corpus b has no weight"),
    (["a=x:0", "b=y:1"], "weight 0.0 must be a positive number"),
    (["a=x:1", "a=y:1"], "corpus name(s) a used twice"),
    (["x/c:abc"], "'abc' after ':' is not a weight"),
    (["bad name=x"], "may hold only letters"),
])
def test_bad_data_path_entries_are_named(entries, message):
    with pytest.raises(DataError, match=None) as e:
        parse_corpora(entries)
    assert message in str(e.value)


def test_yaml_mapping_form_gives_the_same_corpora(tmp_path, tiny_model_dir, toy_corpora):
    from llt.data.run_data import build_data
    from llt.train.parse import parse_args

    assert parse_corpora({"math": "out/m:0.3", "chat": {"path": "out/c", "weight": 0.7}}) == \
        parse_corpora(["math=out/m:0.3", "chat=out/c:0.7"])
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(f"data_path:\n  prose: {toy_corpora['text']}:0.25\n"
                      f"  answers: {{path: {toy_corpora['qa']}, weight: 0.75}}\n"
                      "eval_split: 4\nuse_cpu: true\ndeepspeed_config_path: none\nreport_to: none\n")
    _, data_args, _, args = parse_args([str(recipe), "--model_path", str(tiny_model_dir),
                                        "--output_path", str(tmp_path / "runs")])
    data = build_data(data_args, seed=args.seed)
    assert data.names == ["prose", "answers"] and data.plan.weights == [0.25, 0.75]
    assert len(data.eval_set) == 4


def _plan(ds, weights, seed=3, split=0.0, shuffle=True):
    pools = split_eval(ds, split)
    tokens = [int(ds.sample_lengths(p.ids(np.arange(p.size))).sum()) for p in pools]
    return EpochPlan(pools, tokens, weights, seed=seed, names=ds.names, shuffle=shuffle), _held(pools)


def _held(pools):
    return [np.sort(p.held_ids(np.arange(p.held))) for p in pools]


def test_weights_give_each_corpus_its_token_share_and_resampling_rotates(toy_corpora):
    ds = ShardDataset([toy_corpora["text"], toy_corpora["qa"]])
    lengths, corpus = ds.sample_lengths(np.arange(len(ds))), np.repeat([0, 1], np.diff(ds.corpus_offsets))
    plan, _ = _plan(ds, [0.2, 0.8])
    for epoch in range(3):
        ids = plan.ids(epoch)
        tokens = np.bincount(corpus[ids], weights=lengths[ids])
        assert tokens[0] / tokens.sum() == pytest.approx(0.2, abs=0.02)
        # The mix holds as many tokens as both corpora together.
        assert tokens.sum() == pytest.approx(lengths.sum(), rel=0.03)
    text = [set(ids[corpus[ids] == 0].tolist()) for ids in map(plan.ids, range(3))]
    n_text = int(np.diff(ds.corpus_offsets)[0])
    assert len(text[0]) < n_text  # down-sampled...
    assert not text[0] & text[1]  # ...with a different subset each epoch until all are used
    qa0 = plan.ids(0)[corpus[plan.ids(0)] == 1]
    counts = np.bincount(qa0 - ds.corpus_offsets[1])
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # up-sampled evenly
    # Deterministic for a seed, different for another.
    assert np.array_equal(plan.ids(2), _plan(ds, [0.2, 0.8])[0].ids(2))
    assert not np.array_equal(plan.ids(2), _plan(ds, [0.2, 0.8], seed=4)[0].ids(2))
    # Without weights: every sample once, the natural mix.
    natural, _ = _plan(ds, None)
    assert sorted(natural.ids(5).tolist()) == list(range(len(ds)))


def test_eval_split_is_fixed_and_never_trained(toy_corpora):
    ds = ShardDataset([toy_corpora["text"], toy_corpora["qa"]])
    held = _held(split_eval(ds, 0.1))
    assert [len(h) for h in held] == [round(0.1 * n) for n in np.diff(ds.corpus_offsets)]
    assert all(np.array_equal(a, b) for a, b in zip(held, _held(split_eval(ds, 0.1))))  # no seed involved
    held_all = set(np.concatenate(held).tolist())
    for weights in (None, [0.5, 0.5]):
        for seed in (1, 2):
            for shuffle in (True, False):
                plan, _ = _plan(ds, weights, seed=seed, split=0.1, shuffle=shuffle)
                for epoch in range(3):
                    assert not held_all & set(plan.ids(epoch).tolist())
    # Unweighted and unshuffled: every training sample once, in stored order.
    plan, _ = _plan(ds, None, split=0.1, shuffle=False)
    assert plan.ids(0).tolist() == sorted(set(range(len(ds))) - held_all)
    with pytest.raises(DataError, match="leaving nothing to train on"):
        split_eval(ds, 10_000)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, tiny_model_dir, toy_corpora):
    """One epoch of a 30/70 text/qa mix with a 10% held-out split, evaluated every 5 steps."""
    out = tmp_path_factory.mktemp("mixed")
    argv = _args(tiny_model_dir, out, "--data_path", f"text={toy_corpora['text']}:0.3",
                 f"qa={toy_corpora['qa']}:0.7", "--eval_split", "0.1", "--eval_steps", "5",
                 "--save_steps", "5", "--max_epochs", "1")
    assert train(argv) == 0
    return run_folder(out)


def test_mixed_run_reports_the_mix_it_achieved_per_corpus(mixed_run, toy_corpora):
    history = json.loads((mixed_run / "loss_history.json").read_text())
    train_logs = [e for e in history if "loss" in e]
    last = train_logs[-1]
    # After one mixture epoch, the tokens seen per corpus are exactly the plan's.
    ds = ShardDataset([toy_corpora["text"], toy_corpora["qa"]], names=["text", "qa"])
    plan, _ = _plan(ds, [0.3, 0.7], seed=7, split=0.1)
    lengths, corpus = ds.sample_lengths(np.arange(len(ds))), np.repeat([0, 1], np.diff(ds.corpus_offsets))
    ids = plan.ids(0)
    planned = np.bincount(corpus[ids], weights=lengths[ids])
    assert [last["tokens_seen/text"], last["tokens_seen/qa"]] == planned.astype(int).tolist()
    assert last["tokens_seen/text"] + last["tokens_seen/qa"] == last["tokens_seen"]
    assert last["share/text"] == pytest.approx(0.3, abs=0.02)
    # Per-corpus losses are logged and the overall loss lies between them (it is their
    # token-weighted mean over the interval).
    both = [e for e in train_logs if "loss/text" in e and "loss/qa" in e]
    assert len(both) > len(train_logs) / 3
    for e in both:
        lo, hi = sorted([e["loss/text"], e["loss/qa"]])
        assert lo - 1e-3 <= e["loss"] <= hi + 1e-3


def manual_eval(ckpt, toy_corpora, split=0.1) -> np.ndarray:
    """[corpus, (loss sum, trained tokens)] of a checkpoint on the held-out text/qa samples,
    one sample at a time, with transformers' own logits."""
    from transformers import AutoModelForCausalLM

    from llt.data.collate import PaddingFreeCollator
    from llt.data.heldout import build_eval_set

    ds = ShardDataset([toy_corpora["text"], toy_corpora["qa"]], names=["text", "qa"])
    eval_set = build_eval_set(ds, split_eval(ds, split))
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    model.eval()
    sums = np.zeros((2, 2))
    for i in range(len(eval_set)):
        s = eval_set[i]
        b = PaddingFreeCollator(flat=False)([s])
        with torch.no_grad():
            logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits[0, :-1]
        target = b["labels"][0, 1:]
        keep = target != -100
        ce = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
        sums[s["corpus"]] += (ce.item(), keep.sum().item())
    return sums


def test_eval_loss_is_the_token_weighted_loss_on_held_out_samples(mixed_run, toy_corpora):
    history = json.loads((mixed_run / "loss_history.json").read_text())
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evals][:2] == [5, 10]
    last_step = max(e["step"] for e in history)
    assert evals[-1]["step"] == last_step  # evaluated at the end too
    sums = manual_eval(mixed_run / f"checkpoint-{last_step}", toy_corpora)
    assert evals[-1]["eval_tokens"] == int(sums[:, 1].sum())
    assert evals[-1]["eval_loss"] == pytest.approx(sums[:, 0].sum() / sums[:, 1].sum(), rel=1e-5)
    assert evals[-1]["eval_loss/text"] == pytest.approx(sums[0, 0] / sums[0, 1], rel=1e-5)
    assert evals[-1]["eval_loss/qa"] == pytest.approx(sums[1, 0] / sums[1, 1], rel=1e-5)


def test_run_folder_records_config_environment_data_best_checkpoint(mixed_run, toy_corpora):
    env = json.loads((mixed_run / "llt_env.json").read_text())
    assert env["world_size"] == 1 and env["packages"]["torch"] == torch.__version__
    assert env["devices"] == ["cpu"] and "transformers" in env["packages"]
    data = json.loads((mixed_run / "llt_data.json").read_text())
    assert [c["name"] for c in data["corpora"]] == ["text", "qa"]
    assert [c["weight"] for c in data["corpora"]] == [0.3, 0.7]
    assert data["corpora"][0]["shards"][0]["path"].startswith(str(toy_corpora["text"]))
    assert data["eval"]["groups"] == ["text", "qa"]
    summary = json.loads((mixed_run / "run_summary.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in json.loads((mixed_run / "loss_history.json").read_text())
             if "eval_loss" in e}
    best_step = min(evals, key=evals.get)
    assert summary["best_eval_step"] == best_step
    assert summary["best_eval_loss"] == evals[best_step]
    state = json.loads((mixed_run / f"checkpoint-{summary['global_step']}" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(mixed_run / f"checkpoint-{best_step}")
    assert (mixed_run / f"checkpoint-{best_step}" / "model.safetensors").is_file()
    assert (mixed_run / "llt_config.json").is_file() and (mixed_run / "loss.png").is_file()


def test_export_best_takes_the_best_checkpoint_by_eval_loss(mixed_run, tmp_path):
    from llt.runs.export import export

    summary = json.loads((mixed_run / "run_summary.json").read_text())
    info = export(str(mixed_run), tmp_path / "best", best=True)
    assert info["source"] == str((mixed_run / f"checkpoint-{summary['best_eval_step']}").resolve())
    assert info["step"] == summary["best_eval_step"]


def test_mixed_run_resumes_exactly_and_refuses_a_changed_mix(tmp_path, tiny_model_dir, toy_corpora, capsys):
    mix = ["--data_path", f"text={toy_corpora['text']}:0.3", f"qa={toy_corpora['qa']}:0.7",
           "--eval_split", "0.1", "--max_steps", "8", "--save_steps", "4", "--save_optimizer"]
    assert train(_args(tiny_model_dir, tmp_path / "a", *mix)) == 0
    full = run_folder(tmp_path / "a")
    assert train(_args(tiny_model_dir, tmp_path / "b", *mix, "--load_ckpt_path", str(full / "checkpoint-4"))) == 0
    resumed = run_folder(tmp_path / "b")
    a = json.loads((full / "loss_history.json").read_text())
    b = json.loads((resumed / "loss_history.json").read_text())
    keys = ("loss", "loss/text", "loss/qa", "tokens_seen/text", "tokens_seen", "eval_loss")
    assert [{k: e.get(k) for k in keys} for e in a] == [{k: e.get(k) for k in keys} for e in b]
    changed = [m if not m.endswith(":0.7") else m.replace(":0.7", ":0.5") for m in mix]
    assert train(_args(tiny_model_dir, tmp_path / "c", *changed, "--load_ckpt_path", str(full))) == 2
    assert "--data_path corpora or weights" in capsys.readouterr().err


def test_eval_data_path_is_evaluated_and_must_not_be_trained_on(tmp_path, tiny_model_dir, toy_corpora, capsys):
    common = ["--max_steps", "2", "--eval_steps", "2"]
    assert train(_args(tiny_model_dir, tmp_path / "a", "--data_path", str(toy_corpora["qa"]),
                       "--eval_data_path", str(toy_corpora["qa_packed"]), *common)) == 0
    history = json.loads((run_folder(tmp_path / "a") / "loss_history.json").read_text())
    n_trained = sum((s["labels"][1:] != -100).sum() for s in
                    (ShardDataset(toy_corpora["qa_packed"])[i] for i in range(len(ShardDataset(toy_corpora["qa_packed"])))))
    assert [e["eval_tokens"] for e in history if "eval_loss" in e] == [n_trained]
    assert train(_args(tiny_model_dir, tmp_path / "b", "--data_path", str(toy_corpora["qa"]),
                       "--eval_data_path", str(toy_corpora["qa"]), *common)) == 2
    assert "also under --data_path" in capsys.readouterr().err
    assert train(_args(tiny_model_dir, tmp_path / "c", "--data_path", str(toy_corpora["qa"]),
                       "--eval_strategy", "steps", *common)) == 2
    assert "no held-out data" in capsys.readouterr().err


def test_tensorboard_gets_the_logged_scalars(tmp_path, tiny_model_dir, toy_corpora):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llt.train.sft import main

    assert main(["--deepspeed_config_path", "none", "--use_cpu", "--disable_tqdm", "true",
                 *_args(tiny_model_dir, tmp_path, "--data_path", str(toy_corpora["qa"]), "--max_steps", "3",
                        "--eval_split", "0.1", "--eval_steps", "3", "--report_to", "tensorboard")]) == 0
    run = run_folder(tmp_path)
    events = list((run / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under the run folder"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/trained_tokens_per_second", "eval/loss"} <= set(tags)
    losses = logged_losses(run / "checkpoint-3")
    assert [round(e.value, 4) for e in acc.Scalars("train/loss")] == [round(losses[s], 4) for s in sorted(losses)]


def test_llt_plot_draws_several_runs_and_names_a_bad_one(mixed_run, tmp_path, capsys):
    from matplotlib.image import imread

    from llt.cli import main

    out = tmp_path / "cmp.png"
    assert main(["plot", str(mixed_run), str(mixed_run / "checkpoint-5"), "--labels", "full", "early",
                 "--out", str(out)]) == 0
    image = imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600 and image.std() > 0.01
    assert main(["plot", str(mixed_run), "--x", "step", "--out", str(tmp_path / "s.svg")]) == 0
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert f"{tmp_path}: no loss_history.json" in capsys.readouterr().err

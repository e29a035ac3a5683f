"""Users extend a run with their own Trainer callbacks, named in a recipe or on the command
line (issue 28); llt's callbacks work in a plain `transformers.Trainer`; llt builds its
trainer for a Python program that changes it before training."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_folder, train

ROOT = Path(__file__).resolve().parents[1]

RECORDER = '''
import json
from transformers import TrainerCallback


class Recorder(TrainerCallback):
    """Writes what on_log receives; stops training once `stop_at` is reached."""

    def __init__(self, out, stop_at=None, tag="file"):
        self.out, self.stop_at, self.tag = out, stop_at, tag

    def on_log(self, args, state, control, logs=None, **kw):
        with open(self.out, "a") as f:
            f.write(json.dumps({"tag": self.tag, "rank": args.process_index, "step": state.global_step,
                                **logs}) + "\\n")
        if self.stop_at and state.global_step >= self.stop_at:
            control.should_training_stop = True


class Raiser(TrainerCallback):
    def __init__(self, at_step=2):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at_step:
            raise KeyError("no such sample")


class NotACallback:
    pass


class NeedsArg(TrainerCallback):
    def __init__(self, every: int):
        self.every = every
'''


def _flags(model, corpus, out, *extra):
    return ["--model_path", str(model), "--data_path", str(corpus), "--output_path", str(out),
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--max_steps", "12",
            "--learning_rate", "1e-3", *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def cb_file(tmp_path) -> Path:
    f = tmp_path / "my_callbacks.py"
    f.write_text(RECORDER)
    return f


def test_a_callback_from_a_file_with_recipe_kwargs_sees_llts_figures_and_stops_with_a_checkpoint(
        tmp_path, tiny_model_dir, toy_corpora, cb_file):
    from llt.runs.folder import checkpoints

    log = tmp_path / "log.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"callbacks": [{"name": f"{cb_file}:Recorder",
                                                     "kwargs": {"out": str(log), "stop_at": 3}}]}))
    assert train(["--config", str(recipe), *_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs")]) == 0
    rows = [r for r in _records(log) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]  # stopped at 3 of 12
    for r in rows:  # llt's meters ran first: their figures are in the logs the callback got
        assert r["trained_tokens_per_second"] > 0 and r["tokens_seen"] > 0 and r["loss"] > 0
    run = run_folder(tmp_path / "runs")
    assert [c.name for c in checkpoints(run)] == ["checkpoint-3"]  # the final checkpoint, complete
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(str(run / "checkpoint-3"))
    config = json.loads((run / "llt_config.json").read_text())
    assert config["args"]["callbacks"] == [{"name": f"{cb_file}:Recorder", "kwargs": {"out": str(log), "stop_at": 3}}]


def test_a_callback_from_a_module_on_the_command_line_and_one_added_in_python(
        tmp_path, tiny_model_dir, toy_corpora, cb_file, monkeypatch):
    """`package.module:Class` with JSON kwargs on the command line, and the library way:
    the docs' example, built by llt, changed in Python, trained."""
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / "log.jsonl"
    kwargs = json.dumps({"out": str(log), "stop_at": 2, "tag": "module"})
    assert train([*_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs"),
                  "--callbacks", f"my_callbacks:Recorder={kwargs}"]) == 0
    assert [(r["tag"], r["step"]) for r in _records(log) if "loss" in r] == [("module", 1), ("module", 2)]

    code = _example("library")
    code = code.replace('"MODEL"', repr(str(tiny_model_dir))).replace('"out/alpaca"', repr(str(toy_corpora["qa"])))
    code = code.replace('"--max_steps", "100"', f'"--max_steps", "30", "--logging_steps", "1", "--use_cpu", '
                                                f'"--learning_rate", "3e-2", '
                                                f'"--report_to", "none", "--output_path", {str(tmp_path / "lib")!r}')
    code = code.replace("StopBelow(loss=1.2)", "StopBelow(loss=5.7)")  # what LoRA on the tiny model reaches
    assert "StopBelow(loss=5.7)" in code and "build_trainer" in code
    monkeypatch.chdir(ROOT)  # the example names recipes/lora_sft.yaml from the checkout
    scope: dict = {}
    exec(compile(code, "docs/training.md:library", "exec"), scope)
    state = scope["trainer"].state
    assert 0 < state.global_step < 30  # StopBelow ended it early
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    assert losses[-1] < 5.7 and all(x >= 5.7 for x in losses[:-1])  # it stopped at the first below


@pytest.mark.parametrize("spec,expected", [
    ("{dir}/missing.py:Recorder", r"--callbacks {dir}/missing.py:Recorder: no such file .*missing\.py"),
    ("{dir}/broken.py:Recorder", r"--callbacks {dir}/broken.py:Recorder: {dir}/broken.py does not import: "
                                 r"ZeroDivisionError: division by zero \(.*broken\.py:2\)"),
    ("{dir}/my_callbacks.py:Recordr", r"--callbacks {dir}/my_callbacks.py:Recordr: {dir}/my_callbacks.py has no "
                                      r"Recordr \(its callbacks: NeedsArg, Raiser, Recorder\)"),
    ("{dir}/my_callbacks.py:NotACallback", r".*NotACallback is not a transformers.TrainerCallback subclass.*"),
    ("{dir}/my_callbacks.py:NeedsArg", r".*NeedsArg: kwargs \{\}: missing a required argument: 'every' "
                                       r"\(it takes: every\)"),
    ('{dir}/my_callbacks.py:NeedsArg={{"every": 1, "often": 2}}',
     r".*NeedsArg: kwargs \{'every': 1, 'often': 2\}: got an unexpected keyword argument 'often' \(it takes: every\)"),
    ("no_such_module_xyz:Thing", r"--callbacks no_such_module_xyz:Thing: no_such_module_xyz does not import: "
                                 r"ModuleNotFoundError: .*"),
    ("Recorder", r"--callbacks Recorder: name it as path/to/file.py:Class or package.module:Class"),
])
def test_a_bad_callback_is_one_line_before_any_data_work(spec, expected, tmp_path, tiny_model_dir, cb_file, capsys):
    (tmp_path / "broken.py").write_text("import os\nx = 1 / 0\n")
    spec = spec.replace("{dir}", str(tmp_path)).replace("{{", "{").replace("}}", "}")
    expected = expected.replace("{dir}", re.escape(str(tmp_path)))
    # The data path does not exist: the callback is checked first.
    rc = train(_flags(tiny_model_dir, tmp_path / "no_data", tmp_path / "runs") + ["--callbacks", spec])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert re.fullmatch(r"llt train: error: " + expected, err[0]), err[0]
    assert "Traceback" not in err[0]


def test_a_callback_that_raises_stops_the_run_naming_it_with_a_resumable_checkpoint(
        tmp_path, tiny_model_dir, toy_corpora, cb_file, capsys):
    from llt.runs.folder import checkpoints

    out = tmp_path / "runs"
    rc = train([*_flags(tiny_model_dir, toy_corpora["qa_packed"], out), "--callbacks", f"{cb_file}:Raiser"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1
    assert re.fullmatch(rf"llt train: error: callback {re.escape(str(cb_file))}:Raiser raised in on_step_end at "
                        r"step 2: KeyError: 'no such sample' \(.*my_callbacks\.py:\d+\); resumable checkpoint saved "
                        r"after step 3; continue with --load_ckpt_path .*", err), err
    run = run_folder(out)
    assert [c.name for c in checkpoints(run)] == ["checkpoint-3"]
    # resumable: it holds what exact resume needs, and resuming goes on from step 3
    assert train([*_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "resumed"), "--max_steps", "5",
                  "--load_ckpt_path", str(run)]) == 0
    resumed = json.loads((run_folder(tmp_path / "resumed") / "loss_history.json").read_text())
    assert [e["step"] for e in resumed if "loss" in e][-3:] == [3, 4, 5]


def _example(name: str) -> str:
    """The python block after `<!-- example: NAME -->` in docs/training.md."""
    text = (ROOT / "docs" / "training.md").read_text()
    after = text.split(f"<!-- example: {name} -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_llts_callbacks_in_a_plain_transformers_trainer(tmp_path, monkeypatch):
    """The docs' example as written: a plain Trainer on an in-memory dataset gets throughput
    figures, the loss history and its plot."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_example("plain-trainer"), "docs/training.md:plain-trainer", "exec"), scope)
    logged = [e for e in scope["trainer"].state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == [2, 4, 6, 8]
    seen = [e["tokens_seen"] for e in logged]
    assert seen == [2 * 4 * 16 * k for k in (1, 2, 3, 4)]  # 2 steps x 4 rows x 16 tokens per log line
    assert all(e["tokens_per_second"] > 0 for e in logged)
    history = json.loads((tmp_path / "plain_run" / "loss_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [2, 4, 6, 8]
    assert (tmp_path / "plain_run" / "loss.png").stat().st_size > 0
    assert json.loads((tmp_path / "plain_run" / "run_summary.json").read_text())["global_step"] == 8


@pytest.mark.slow
def test_a_user_callback_runs_on_every_rank_of_a_two_process_launch(tmp_path, tiny_model_dir, toy_corpora, cb_file):
    from tests.procs import launcher, run

    log = tmp_path / "log.jsonl"
    kwargs = json.dumps({"out": str(log), "stop_at": 2})
    run([*launcher("accelerate", nproc=2), *_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs"),
         "--use_cpu", "--deepspeed_config_path", "none", "--report_to", "none",
         "--callbacks", f"{cb_file}:Recorder={kwargs}"])
    rows = [r for r in _records(log) if "loss" in r]
    assert sorted((r["rank"], r["step"]) for r in rows) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    # llt's figures are summed over ranks before the callbacks see them: equal on both
    by_step = {}
    for r in rows:
        by_step.setdefault(r["step"], set()).add(r["tokens_seen"])
    assert all(len(v) == 1 for v in by_step.values()), by_step
    assert sys.executable


def test_the_readme_callback_example_stops_a_run_with_its_checkpoint(tmp_path, tiny_model_dir, toy_corpora,
                                                                     monkeypatch):
    from llt.runs.folder import checkpoints

    readme = (ROOT / "README.md").read_text().split("### Your own callbacks", 1)[1]
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    recipe = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert code.startswith("# my_callbacks.py") and "callbacks:" in recipe
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_callbacks.py").write_text(code)
    stop = tmp_path / "stop-my-run"
    (tmp_path / "r.yaml").write_text(recipe.replace("/tmp/stop-my-run", str(stop)))
    stop.touch()  # present from the start: the run stops after its first step
    assert train(["--config", "r.yaml", *_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs")]) == 0
    assert [c.name for c in checkpoints(run_folder(tmp_path / "runs"))] == ["checkpoint-1"]

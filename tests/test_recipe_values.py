"""Recipe values and flags are checked against their fields' types before any work
(issue 29): a wrong one is one line naming the file, key, value and what it needs."""

from __future__ import annotations

import dataclasses
import random
import re
import typing

import pytest
import yaml

from llt.errors import ConfigError
from llt.train.methods import METHODS, get_method
from llt.train.parse import DATACLASSES, parse_args
from llt.values import choices_of

NEEDS = {bool: "true or false", int: "an integer", float: "a number"}
REQUIRED = ["--model_path", "m", "--data_path", "d"]


def _fields():
    """(method, field name, declared type) of every field a training command reads."""
    from llt.train.parse import field_types

    seen = set()
    for name in METHODS:
        kinds = field_types(get_method(name).arguments)  # the declared types, or a recipe's richer form
        for cls in DATACLASSES + tuple(get_method(name).arguments):
            for f in dataclasses.fields(cls):
                if f.init and (cls, f.name) not in seen:
                    seen.add((cls, f.name))
                    yield name, f.name, kinds[f.name]


def _members(kind):
    args = typing.get_args(kind) if type(kind).__name__ == "UnionType" or typing.get_origin(kind) is typing.Union else (kind,)
    return [a for a in args if a is not type(None)], type(None) in args


def _wrong(kind, rng: random.Random) -> list:
    """Values YAML can give that a field of type `kind` must refuse (none for a type
    that takes anything, such as HF's `ParallelismConfig`)."""
    members, optional = _members(kind)
    plain = {typing.get_origin(m) or m for m in members}
    if choices_of(kind) is not None:
        bad = ["not_a_choice", [1, 2], {"a": 1}] + ([] if optional else [None])
    elif plain == {bool}:
        bad = [[1, 2], {"a": 1}, "maybe", 2, 0.5] + ([] if optional else [None])
    elif plain == {int}:
        bad = [2.7, "abc", [3], {"a": 1}, True] + ([] if optional else [None])
    elif plain == {float}:
        bad = ["abc", [1.0], {"a": 1}, True] + ([] if optional else [None])
    elif plain == {str} or str in plain and plain - {str} == {typing.Literal}:
        bad = [[1], {"a": 1}, True]
    elif plain == {list}:
        bad = [{"a": 1}, True, [{"a": 1}], [[1]]]
    elif plain == {list, dict}:  # corpora or callbacks: a list of names, or a mapping
        bad = [True, [[1]], [True]]
    elif plain <= {dict, str}:
        bad = [[1], True, 5, 0.5]
    elif plain <= {str, list}:
        bad = [{"a": 1}, True, [{"a": 1}]]
    elif plain == {str, bool}:
        bad = [[1], {"a": 1}, 5]
    else:
        return []
    rng.shuffle(bad)
    return bad[:2]


CASES = [(m, k, kind) for m, k, kind in _fields() if _wrong(kind, random.Random(0))]


def test_every_checkable_field_is_covered():
    """The cases reach every group, and only types nobody sets from YAML are unchecked."""
    names = {k for _, k, _ in CASES}
    assert {"use_lora", "max_steps", "learning_rate", "data_path", "eval_strategy",
            "save_steps", "beta", "pref_loss", "restore_callback_states_from_checkpoint"} <= names
    unchecked = {k for _, k, kind in _fields()} - names
    assert unchecked == {"parallelism_config"}, unchecked


@pytest.mark.parametrize("method,key,kind", CASES, ids=[f"{m}-{k}" for m, k, _ in CASES])
def test_a_wrong_value_in_a_recipe_is_one_line_naming_file_key_and_value(method, key, kind, tmp_path):
    rng = random.Random(f"{method}/{key}")
    recipe = tmp_path / "r.yaml"
    for value in _wrong(kind, rng):
        recipe.write_text(yaml.safe_dump({key: value}))
        with pytest.raises(ConfigError) as e:
            parse_args(["--config", str(recipe)] + REQUIRED, get_method(method).arguments)
        shown = value if isinstance(value, str) else __import__("json").dumps(value)
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"{recipe}: {key}: {shown} is not "), msg
        plain = _members(kind)[0]
        if len(plain) == 1 and plain[0] in NEEDS:
            assert msg.endswith(f"is not {NEEDS[plain[0]]}"), msg
        if choices_of(kind):
            assert msg.endswith("is not one of " + ", ".join(str(c) for c in choices_of(kind))), msg


FLAG_CASES = [(m, k, kind) for m, k, kind in CASES
              if choices_of(kind) or _members(kind)[0] in ([bool], [int], [float])]


@pytest.mark.parametrize("method,key,kind", FLAG_CASES, ids=[f"{m}-{k}" for m, k, _ in FLAG_CASES])
def test_a_wrong_value_on_the_command_line_is_one_line_naming_the_flag(method, key, kind):
    members = _members(kind)[0]
    text = {bool: "maybe", int: "2.7", float: "abc"}.get(members[0], "not_a_choice")
    for argv in ([f"--{key}", text], [f"--{key}={text}"]):
        with pytest.raises(ConfigError) as e:
            parse_args(argv + REQUIRED, get_method(method).arguments)
        assert re.fullmatch(rf"--{key}: {text} is not [^\n]+", str(e.value)), str(e.value)


def test_yaml_forms_are_read_as_a_user_means_them(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("use_lora: yes\nlearning_rate: 1e-4\nmax_steps: 1.0e+3\nmax_grad_norm: 2\n"
                      "run_name: 7\nreport_to: none\nadd_tokens: '<x>'\nseed: '5'\n"
                      "lr_scheduler_kwargs: {min_lr: 0.0}\neval_steps: ~\n")
    model, data, lora, train = parse_args(["--config", str(recipe), "--output_dir", str(tmp_path / "o")] + REQUIRED)
    assert lora.use_lora is True and train.learning_rate == 1e-4 and train.max_steps == 1000
    assert train.max_grad_norm == 2.0 and train.run_name == "7" and train.seed == 5
    assert model.add_tokens == ["<x>"] and train.lr_scheduler_kwargs == {"min_lr": 0.0}
    assert train.report_to in ("none", [], ["none"])


def test_every_default_passes_its_own_check(tmp_path):
    """The check refuses nothing a field holds by default: a recipe of every field of the
    four groups at its default value parses."""
    from llt.train.parse import field_types

    values = {}
    for cls in DATACLASSES:
        for f in dataclasses.fields(cls):
            # HF's own parser cannot read back `debug`'s default "" (a list of DebugOption).
            if not f.init or f.name in ("parallelism_config", "debug"):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if default is dataclasses.MISSING or default is None and not _members(field_types()[f.name])[1]:
                continue
            values[f.name] = getattr(default, "value", default)
    values.update({"model_path": "m", "data_path": ["d"], "output_dir": str(tmp_path / "o")})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(values))
    parse_args(["--config", str(recipe)])


@pytest.mark.parametrize("line,expected", [
    ("use_lora: [1, 2]", "use_lora: [1, 2] is not true or false"),
    ("shuffle_data: {a: 1}", 'shuffle_data: {"a": 1} is not true or false'),
    ("max_steps: 2.7", "max_steps: 2.7 is not an integer"),
    ("save_steps: [3]", "save_steps: [3] is not a number"),
    ("learning_rate: abc", "learning_rate: abc is not a number"),
])
def test_the_issues_table_through_llt_train(line, expected, tmp_path, capsys):
    """The cases users hit, through the command: one line, exit 2, no run folder."""
    from llt.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(line + "\n")
    rc = main(["train", "--config", str(recipe), "--model_path", str(tmp_path / "m"),
               "--data_path", str(tmp_path / "d"), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [f"llt train: error: {recipe}: {expected}"]
    assert not (tmp_path / "run").exists()

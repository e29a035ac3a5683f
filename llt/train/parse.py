"""Command line and YAML recipe -> the four training dataclasses.

    python recipes/sft.py --config recipes/lora_sft.yaml --model_path M --data_path D

The YAML file gives defaults (any field of the four dataclasses, by its name or a seed
alias such as `max_epochs`); flags on the command line override it. An unknown key in
the file or an unknown flag is an error, never silently ignored. Defaults that depend on
other flags (evaluation when there is held-out data) are settled here, before the
dataclasses are built, so nothing rewrites the arguments afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import typing

import yaml
from transformers import HfArgumentParser

from llt.errors import ConfigError
from llt.flags import OneLineErrors, check_flags
from llt.resources import user_or_shipped
from llt.train.config import (RECIPE_TYPES, DataArguments, LltTrainingArguments, LoraArguments, ModelArguments,
                              cpu_only_launch)
from llt.train.methods import RunArgs
from llt.values import WrongType, coerce

DATACLASSES = (ModelArguments, DataArguments, LoraArguments, LltTrainingArguments)


class _Parser(OneLineErrors, HfArgumentParser):
    """HfArgumentParser whose errors are one line (a `ConfigError`), not the usage text."""


def build_parser(extra: tuple = ()) -> HfArgumentParser:
    return _Parser(DATACLASSES + tuple(extra))


def field_types(extra: tuple = ()) -> dict:
    """Each flag's destination -> its field's declared type, over the four groups and
    `extra` (HF rewrites `Field.type` in place, so the hints are read from the classes)."""
    kinds = {}
    for cls in DATACLASSES + tuple(extra):
        hints = typing.get_type_hints(cls)
        kinds.update({f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init})
    return kinds | RECIPE_TYPES


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--config FILE` (or a leading `FILE.yaml`) out of argv."""
    argv = list(argv)
    # The `deepspeed` launcher puts --local_rank=N before the script's own arguments.
    first = next((i for i, a in enumerate(argv) if not a.startswith("--local_rank=")), None)
    if first is not None and argv[first].endswith((".yaml", ".yml")):
        return argv[first], argv[:first] + argv[first + 1:]
    for i, a in enumerate(argv):
        if a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config: expected a YAML file after it")
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--config="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def read_recipe(path: str, parser: HfArgumentParser) -> dict:
    """A YAML recipe as parser defaults; keys are checked against the flags. A path that
    does not exist here may name a shipped recipe (`recipes/lora_sft.yaml`)."""
    p = user_or_shipped(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag: value, got {type(data).__name__}")
    dest = {}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--"):
                dest[opt[2:]] = action.dest
    unknown = sorted(k for k in data if k not in dest)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(dest), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ConfigError(f"--config {path}: unknown key(s) {', '.join(unknown)}{hint}; "
                          "every key must be a training flag (see --help)")
    kinds = field_types_of(parser)
    checked = {}
    for key, value in data.items():
        try:
            checked[dest[key]] = coerce(kinds[dest[key]], value) if dest[key] in kinds else value
        except WrongType as e:
            raise ConfigError(f"{path}: {key}: {e}") from None
    return checked


def field_types_of(parser) -> dict:
    return field_types(tuple(t for t in parser.dataclass_types if t not in DATACLASSES))


def unknown_flag_message(parser, remaining: list[str]) -> str:
    """One line naming the first unknown argument and the closest known flags.

    Examples:
        >>> unknown_flag_message(build_parser(), ["--lerning_rate", "1e-4"])
        'unknown flag --lerning_rate; did you mean --learning_rate? (see --help)'
    """
    # HF registers --a_b and --a-b for each field: suggest the underscore spelling once.
    flags = sorted({o for a in parser._actions for o in a.option_strings if o.startswith("--")
                    and (o == "--" + o[2:].replace("-", "_") or "_" not in a.dest)})
    first = next((r for r in remaining if r.startswith("-")), remaining[0])
    if not first.startswith("-"):
        return f"unexpected argument {first!r} (flags take the form --name value; see --help)"
    name = first.split("=", 1)[0].replace("-", "_").replace("__", "--", 1)
    near = difflib.get_close_matches(name, flags, n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return f"unknown flag {name}{hint} (see --help)"


def parse_args(argv: list[str] | None = None, extra: tuple = (), needs_data_path: bool = True):
    """(ModelArguments, DataArguments, LoraArguments, LltTrainingArguments, *extra) from argv;
    `extra`: more dataclasses of flags (a training method's own, such as `PreferenceArguments`)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(extra)
    config, rest = _split_config(argv)
    check_flags(rest, parser, field_types(extra))
    recipe = read_recipe(config, parser) if config else {}
    parser.set_defaults(**recipe)
    parser.set_defaults(**eval_defaults(recipe, rest))
    cpu_world = cpu_only_launch("use_cpu" in recipe or _given(rest, "use_cpu"))
    if cpu_world:
        parser.set_defaults(use_cpu=True)
    *groups, remaining = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if remaining:
        raise ConfigError(unknown_flag_message(parser, remaining))
    model_args, data_args, lora_args, train_args, *more = groups
    _check_eval(data_args, train_args)
    if not model_args.model_path:
        raise ConfigError("--model_path is required (a HF model folder)")
    if needs_data_path and not data_args.data_path:
        raise ConfigError("--data_path is required (corpus folders from `llt encode`)")
    train_args.llt_config_file = config
    train_args.cpu_world = cpu_world  # said once at start-up (llt.train.checks.check_world)
    return (model_args, data_args, lora_args, train_args, *more)


def parse_run(argv: list[str] | None, method) -> RunArgs:
    """The flags of a run under `method` (a `llt.train.methods.TrainingMethod`)."""
    model_args, data_args, lora_args, train_args, *more = parse_args(argv, method.arguments, method.reads_corpora)
    return RunArgs(model_args, data_args, lora_args, train_args, tuple(more))


def _given(argv: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def eval_defaults(recipe: dict, argv: list[str]) -> dict:
    """With held-out data (`--eval_split` or `--eval_data_path`), evaluate every
    `--eval_steps` (HF's default for it: `--logging_steps`) and record the best checkpoint
    by eval loss, unless the recipe or the flags say otherwise."""
    known = HfArgumentParser(DataArguments, allow_abbrev=False, add_help=False, exit_on_error=False)
    known.set_defaults(**{k: v for k, v in recipe.items() if hasattr(DataArguments, k)})
    try:
        data_args, _ = known.parse_known_args(argv)
    except argparse.ArgumentError:
        return {}  # a bad value: the full parser reports it, with the full usage
    if not (data_args.eval_split and data_args.eval_split > 0) and not data_args.eval_data_path:
        return {}
    given = set(recipe) | {a.split("=", 1)[0][2:] for a in argv if a.startswith("--")}
    # HF derives greater_is_better from the metric's name (False for a loss).
    defaults = {"eval_strategy": "steps", "metric_for_best_model": "loss"}
    return {k: v for k, v in defaults.items() if k not in given}


def _check_eval(data_args, train_args) -> None:
    from transformers.trainer_utils import IntervalStrategy

    if train_args.eval_strategy != IntervalStrategy.NO and not (
            data_args.eval_split > 0 or data_args.eval_data_path):
        raise ConfigError(f"--eval_strategy {train_args.eval_strategy.value}: no held-out data; "
                          "give --eval_data_path or --eval_split")

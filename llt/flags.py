"""Command-line parsing of a config dataclass, HfArgumentParser's conventions without
its import.

`llt encode` must start fast (its throughput is measured start-up included) and
`transformers.HfArgumentParser` costs 1.2 s of imports. The conventions are the same:
one `--field_name` flag per field, help from `metadata["help"]`, choices from `Literal`,
`nargs="+"` for lists, and `--flag`, `--flag True` or `--flag false` for booleans.
Every value is checked against its field's type first (`llt.values`), and every error
is one line naming the flag (a `ConfigError`), not argparse's usage text.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from llt.errors import ConfigError
from llt.values import WrongType, coerce


def str2bool(value: str) -> bool:
    """Examples:
        >>> str2bool("True"), str2bool("no")
        (True, False)
    """
    try:
        return coerce(bool, value)
    except WrongType as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class OneLineErrors:
    """An ArgumentParser mixin: an error is a `ConfigError` of one line, not the usage
    text and exit 2 (the commands print it as `llt CMD: error: ...`)."""

    def error(self, message: str):
        # argparse's "argument --max_steps/--max-steps: expected one argument"
        if message.startswith("argument "):
            head, _, rest = message[len("argument "):].partition(": ")
            message = f"{head.split('/')[0]}: {rest}"
        raise ConfigError(f"{message} (see --help)")


class _Parser(OneLineErrors, argparse.ArgumentParser):
    pass


def check_flags(argv: list[str], parser: argparse.ArgumentParser, kinds: dict) -> None:
    """Every flag's value against its field's type (`kinds`: destination -> declared
    type) before argparse reads them: a wrong one is one line,
    `--max_steps: 2.7 is not an integer`."""
    actions = parser._option_string_actions
    i = 0
    while i < len(argv):
        flag, eq, text = argv[i].partition("=")
        i += 1
        action = actions.get(flag) if flag.startswith("--") else None
        if action is None or action.nargs == 0 or action.dest not in kinds:
            continue
        values = [text] if eq else []
        while not eq and i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        if not values:
            continue  # `--use_lora` alone, or argparse's own "expected one argument"
        try:
            coerce(kinds[action.dest], values if action.nargs in ("+", "*") else values[0])
        except WrongType as e:
            raise ConfigError(f"{flag}: {e}") from None


def dataclass_parser(cls, prog: str, description: str = "") -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per field of dataclass `cls`."""
    parser = _Parser(prog=prog, description=description or cls.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        kw: dict = {"help": f.metadata.get("help", "")}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default"] = f.default_factory()
        else:
            kw["required"] = True
        args = typing.get_args(kind)
        origin = typing.get_origin(kind)
        if origin is typing.Union or type(kind).__name__ == "UnionType":  # X | None
            kind = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is bool:
            kw.update(type=str2bool, nargs="?", const=True)
        elif origin is typing.Literal:
            kw.update(type=type(args[0]), choices=list(args))
        elif origin is list:
            kw.update(type=args[0], nargs="+")
        else:
            kw["type"] = kind
        parser.add_argument(f"--{f.name}", **kw)
    return parser


def parse_dataclass(cls, argv: list[str], prog: str, description: str = ""):
    """Build `cls` from command-line `argv`; unknown flags and wrong values are an error."""
    parser = dataclass_parser(cls, prog, description)
    check_flags(argv, parser, typing.get_type_hints(cls))
    return cls(**vars(parser.parse_args(argv)))

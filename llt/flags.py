"""Command-line parsing of a config dataclass, HfArgumentParser's conventions without
its import.

`llt encode` must start fast (its throughput is measured start-up included) and
`transformers.HfArgumentParser` costs 1.2 s of imports. The conventions are the same:
one `--field_name` flag per field, help from `metadata["help"]`, choices from `Literal`,
`nargs="+"` for lists, and `--flag`, `--flag True` or `--flag false` for booleans.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def str2bool(value: str) -> bool:
    """Examples:
        >>> str2bool("True"), str2bool("no")
        (True, False)
    """
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y", "t"):
        return True
    if lowered in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def dataclass_parser(cls, prog: str, description: str = "") -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per field of dataclass `cls`."""
    parser = argparse.ArgumentParser(prog=prog, description=description or cls.__doc__,
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
    """Build `cls` from command-line `argv`; unknown flags are an error."""
    return cls(**vars(dataclass_parser(cls, prog, description).parse_args(argv)))

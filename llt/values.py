"""A value against its field's declared type: the one check behind recipes and flags.

A YAML recipe gives typed values (`max_steps: 2.7` is a float, `use_lora: [1, 2]` a
list); the command line gives text (`--max_steps 2.7`). Both go through `coerce`, which
returns what the field takes or raises `WrongType` saying what it needs, so a wrong value
is one line before any work (`r.yaml: max_steps: 2.7 is not an integer`), never a run
that takes a list as true and never a traceback hours later.

YAML's own types, as a user would expect them (PyYAML reads YAML 1.1):
- `yes`/`no`/`on`/`off`/`true`/`false` are booleans; a boolean field also takes the
  command line's words (`"yes"`, `"0"`...) and the integers 0 and 1.
- `1e-4` without a dot is a string to YAML 1.1; a number field reads the text as the
  command line would, so `learning_rate: 1e-4` is 0.0001.
- `~` and `null` are None: taken where the field is optional, refused otherwise.
- An integer field takes a whole float (`1.0e+3`), never 2.7; a text field takes numbers
  as their text (`run_name: 7`) but not a boolean, list or mapping.
- A list field takes a single value as a list of one, as `--flag value` does.
"""

from __future__ import annotations

import enum
import json
import typing

_NONE = type(None)
# HF's `string_to_bool` words (YAML already reads on/off as booleans).
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "y": True, "t": True,
               "0": False, "false": False, "no": False, "n": False, "f": False}
_NEEDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          dict: "a mapping"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings", dict: "mappings"}


class WrongType(ValueError):
    """`value` is not what the field takes; `need` says what it takes ("an integer")."""

    def __init__(self, value, need: str):
        super().__init__(f"{show(value)} is not {need}")
        self.need = need


def show(value) -> str:
    """A value as the user wrote it: text as is, anything else in JSON's flow form.

    Examples:
        >>> show("abc"), show([1, 2]), show({"a": 1}), show(None), show(2.7)
        ('abc', '[1, 2]', '{"a": 1}', 'null', '2.7')
    """
    return value if isinstance(value, str) else json.dumps(value, default=str)


def choices_of(kind) -> tuple | None:
    """The allowed values of a `Literal` or `Enum` field (or a union holding one, as HF's
    `IntervalStrategy | str`), else None."""
    members = _members(kind)[0]
    # HF's reading: an Enum beside `str` is still a choice; a Literal beside `str` is not
    # (`str | Literal[False]` takes any text).
    for m in members:
        if isinstance(m, type) and issubclass(m, enum.Enum) and set(members) <= {m, str}:
            return tuple(x.value for x in m)
        if typing.get_origin(m) is typing.Literal and len(members) == 1:
            return tuple(typing.get_args(m))
    return None


def coerce(kind, value):
    """`value` (from YAML or a command-line text) as field type `kind` takes it.

    Examples:
        >>> coerce(int | None, 3), coerce(float, "1e-4"), coerce(bool, "no"), coerce(list[str], "a")
        (3, 0.0001, False, ['a'])
        >>> coerce(int, 2.7)
        Traceback (most recent call last):
        ...
        llt.values.WrongType: 2.7 is not an integer
    """
    members, optional = _members(kind)
    if value is None:
        if optional or not members:
            return None
        raise WrongType(value, need_of(kind))
    choices = choices_of(kind)
    if choices is not None:
        for c in choices:
            if value == c or (isinstance(value, enum.Enum) and value.value == c) or (
                    isinstance(value, str) and not isinstance(c, str) and value == str(c)):
                return c
        raise WrongType(value, "one of " + ", ".join(str(c) for c in choices))
    for m in members:  # a Literal beside other types (`str | Literal[False]`)
        if typing.get_origin(m) is typing.Literal and value in typing.get_args(m) and (
                type(value) in {type(a) for a in typing.get_args(m)}):
            return value
    if isinstance(value, str) and str in members:
        return value  # text fits a text field exactly (`report_to: none`, not `[none]`)
    checked = [m for m in members if _plain(m) in (bool, int, float, str, dict, list)]
    if not checked:
        return value  # a type llt does not know how to check (HF's ParallelismConfig)
    # The most specific reading first: a YAML list is a list, a mapping a mapping, and
    # text only when nothing else fits (HF's `dict | str` fields take JSON text).
    order = (bool, int, float, dict, list, str)
    # A number is text only to a plain text field (`run_name: 7`); to HF's `dict | str`
    # fields text means JSON, and `5` is no mapping.
    numbers_as_text = all(_plain(m) is str for m in checked)
    for m in sorted(checked, key=lambda m: order.index(_plain(m))):
        try:
            return _one(m, value, numbers_as_text)
        except WrongType:
            continue
    raise WrongType(value, need_of(kind))


def need_of(kind) -> str:
    """What a field of type `kind` takes, in words ("an integer", "a list of strings")."""
    choices = choices_of(kind)
    if choices is not None:
        return "one of " + ", ".join(str(c) for c in choices)
    words = []
    for m in _members(kind)[0]:
        plain = _plain(m)
        if plain is list:
            items = _members(typing.get_args(m)[0])[0] if typing.get_args(m) else []
            kinds = " or ".join(_PLURAL.get(_plain(i), "values") for i in items)
            words.append(f"a list of {kinds}" if kinds else "a list")
        elif plain in _NEEDS:
            words.append(_NEEDS[plain])
    return " or ".join(dict.fromkeys(words)) or "a value"


def _members(kind) -> tuple[list, bool]:
    """The types of a (possibly optional) union, and whether None is allowed."""
    if typing.get_origin(kind) is typing.Union or type(kind).__name__ == "UnionType":
        args = typing.get_args(kind)
        return [a for a in args if a is not _NONE], _NONE in args
    return [kind], kind is _NONE or kind is typing.Any


def _plain(kind):
    return typing.get_origin(kind) or kind


def _one(kind, value, numbers_as_text: bool = True):
    plain = _plain(kind)
    if plain is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
    elif plain is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif plain is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif plain is str:
        if isinstance(value, str):
            return value
        if numbers_as_text and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif plain is dict:
        if isinstance(value, dict):
            return value
    elif plain is list:
        (item,) = typing.get_args(kind) or (typing.Any,)
        items = value if isinstance(value, list) else [value]
        if isinstance(value, (dict, bool)) and item is not bool:
            raise WrongType(value, need_of(kind))
        try:
            return [coerce(item, v) for v in items]
        except WrongType:
            raise WrongType(value, need_of(kind)) from None
    raise WrongType(value, need_of(kind))

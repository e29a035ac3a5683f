"""Trainer callbacks a user names in a recipe or on the command line, added without forking.

    # recipe.yaml
    callbacks:
      - my_callbacks.py:StopAtLoss             # a file (relative to the working folder)
      - name: my_pkg.callbacks:SampleWriter    # or an importable module
        kwargs: {every: 50}

    llt train ... --callbacks my_callbacks.py:StopAtLoss 'my_pkg.callbacks:SampleWriter={"every": 50}'

Each is a `transformers.TrainerCallback` subclass, built with its keyword arguments when
the run is built, before any data work, so a file that does not import, a missing name or
an argument the class does not take is one line naming it. They run after llt's own
callbacks, so `logs` in `on_log` already holds llt's figures (tokens/s, MFU, per-corpus
losses), on every rank (use `state.is_world_process_zero` to act once).

A callback that raises does not take the run down mid-step: the error is kept, every rank
stops after the current step with a resumable checkpoint (as on preemption), and the run
exits 1 with the callback's name, the event and the error.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from llt.errors import ConfigError

EVENTS = tuple(name for name in vars(TrainerCallback) if name.startswith("on_"))


@dataclass
class CallbackSpec:
    """One named callback: `path/to/file.py:Class` or `package.module:Class`, and its
    keyword arguments."""

    name: str
    kwargs: dict = field(default_factory=dict)


def parse_specs(value) -> list[CallbackSpec]:
    """The `callbacks` value of a recipe or the command line, in any of its forms.

    Examples:
        >>> parse_specs(["a.py:A", 'm:B={"k": 1}'])
        [CallbackSpec(name='a.py:A', kwargs={}), CallbackSpec(name='m:B', kwargs={'k': 1})]
        >>> parse_specs([{"name": "a.py:A", "kwargs": {"k": 2}}, {"m:B": {"k": 3}}])
        [CallbackSpec(name='a.py:A', kwargs={'k': 2}), CallbackSpec(name='m:B', kwargs={'k': 3})]
    """
    if not value:
        return []
    if isinstance(value, dict):  # {NAME: kwargs, ...}
        value = [{k: v} for k, v in value.items()]
    specs = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            name, eq, text = item.partition("=")
            try:
                kwargs = json.loads(text) if eq else {}
            except json.JSONDecodeError as e:
                raise ConfigError(f"--callbacks {item}: the keyword arguments after '=' are not JSON ({e})") from None
            specs.append(CallbackSpec(name.strip(), kwargs))
        elif isinstance(item, dict) and "name" in item and set(item) <= {"name", "kwargs"}:
            specs.append(CallbackSpec(str(item["name"]), item.get("kwargs") or {}))
        elif isinstance(item, dict) and len(item) == 1:
            (name, kwargs), = item.items()
            specs.append(CallbackSpec(str(name), kwargs or {}))
        else:
            raise ConfigError(f"callbacks: {item!r} is not a callback; give `FILE.py:Class`, "
                              "`module:Class`, or {name: ..., kwargs: {...}}")
    for s in specs:
        if not isinstance(s.kwargs, dict):
            raise ConfigError(f"callbacks: {s.name}: kwargs must be a mapping, got {s.kwargs!r}")
    return specs


def load_callbacks(value, on_error) -> list[TrainerCallback]:
    """The callbacks `value` names, built; `on_error(message)` is called when one raises
    during training (`PreemptionCallback.fail`: stop after this step with a checkpoint)."""
    return [build_callback(spec, on_error) for spec in parse_specs(value)]


def user_object(name: str, flag: str, noun: str, hint=None):
    """The object `name` points at (path/to/file.py:NOUN or package.module:NOUN); a
    `ConfigError` naming `flag` and the file when it does not import or lacks it, with
    `hint(module)` appended. Shared with GRPO's reward functions (`llt.train.grpo.rewards`)."""
    where, colon, attr = name.rpartition(":")
    if not colon or not where or not attr:
        raise ConfigError(f"{flag} {name}: name it as path/to/file.py:{noun} or package.module:{noun}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"{flag} {name}: no such file {path.resolve()}")
        module_name = f"llt_user_callbacks.{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look their module up
        loader = lambda: spec.loader.exec_module(module)  # noqa: E731
    else:
        module = None
        loader = lambda: importlib.import_module(where)  # noqa: E731
    try:
        loaded = loader()
    except Exception as e:  # noqa: BLE001 - any import failure is the user's file
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise ConfigError(f"{flag} {name}: {where} does not import: {type(e).__name__}: {e} "
                          f"({frame.filename}:{frame.lineno})") from None
    module = module or loaded
    if not hasattr(module, attr):
        raise ConfigError(f"{flag} {name}: {where} has no {attr}{hint(module) if hint else ''}")
    return getattr(module, attr)


def resolve(name: str) -> type:
    """The class `name` points at; a `ConfigError` naming it when it cannot be used."""
    def hint(module) -> str:
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, TrainerCallback) and v is not TrainerCallback)
        return f" (its callbacks: {', '.join(found)})" if found else " (it defines no TrainerCallback subclass)"

    cls = user_object(name, "--callbacks", "Class", hint)
    if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)):
        raise ConfigError(f"--callbacks {name}: {name.rpartition(':')[2]} is not a transformers.TrainerCallback "
                          f"subclass (it is {type(cls).__name__} {cls!r:.80})")
    return cls


def build_callback(spec: CallbackSpec, on_error) -> TrainerCallback:
    """The user's class, guarded (see `guarded`), built with its keyword arguments."""
    cls = resolve(spec.name)
    try:
        inspect.signature(cls).bind(**spec.kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(cls).parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                      p.KEYWORD_ONLY)]
        takes = ", ".join(p.name for p in params) or "no keyword arguments"
        raise ConfigError(f"--callbacks {spec.name}: kwargs {spec.kwargs}: {e} (it takes: {takes})") from None
    try:
        return guarded(cls, spec.name, on_error)(**spec.kwargs)
    except Exception as e:  # noqa: BLE001 - the user's constructor
        raise ConfigError(f"--callbacks {spec.name}: raised while being built: {type(e).__name__}: {e}") from None


def guarded(cls: type, name: str, on_error) -> type:
    """A subclass of `cls` whose event methods hand an exception to `on_error` instead of
    raising it. A subclass, not a wrapper: `isinstance`, HF's saved callback state (found
    by class name) and the user's own attributes work as they would unguarded."""

    def guard(event: str):
        def method(self, args, state, control, **kw):
            try:
                return getattr(super(sub, self), event)(args, state, control, **kw)
            except Exception as e:  # noqa: BLE001 - reported with the callback's name, see on_error
                frame = traceback.extract_tb(e.__traceback__)[-1]
                on_error(f"callback {name} raised in {event} at step {state.global_step}: "
                         f"{type(e).__name__}: {e} ({frame.filename}:{frame.lineno})")
                return None
        method.__name__ = event
        return method

    sub = type(cls.__name__, (cls,), {e: guard(e) for e in EVENTS} | {"__module__": cls.__module__,
                                                                       "__qualname__": cls.__qualname__})
    return sub

"""The private `transformers.Trainer` methods llt overrides still exist, take the same
parameters and are still called where llt relies on them. A transformers upgrade that
renames or reshapes one fails here, by name, instead of silently skipping llt's atomic
checkpoints or its data position."""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from llt.train.hf_hooks import HOOKS, HfHookOverrides
from llt.train.trainer import LltTrainer


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_overridden_private_hook_exists_with_the_parameters_llt_uses(name):
    assert hasattr(Trainer, name), f"transformers.Trainer.{name} is gone: llt.train.hf_hooks overrides it"
    params = tuple(inspect.signature(getattr(Trainer, name)).parameters)[1:]
    assert params == HOOKS[name], f"transformers.Trainer.{name}{params}: llt.train.hf_hooks expects {HOOKS[name]}"
    # LltTrainer really goes through llt's override.
    assert getattr(LltTrainer, name) is getattr(HfHookOverrides, name)


def test_hf_still_calls_the_hooks_where_llt_relies_on_them():
    source = inspect.getsource(Trainer._save_checkpoint)
    # The staging folder works because HF asks _get_output_dir where the checkpoint goes.
    assert "self._get_output_dir(" in source
    # A preemption save is made resumable by lifting save_only_model for the call.
    assert "save_only_model" in source
    # HF calls _init_training_state from its training loop and takes the position from it.
    assert "self._init_training_state(" in inspect.getsource(Trainer._inner_training_loop)


def test_no_other_private_trainer_method_is_overridden():
    """New private overrides belong in llt.train.hf_hooks, with a reason and a line in HOOKS."""
    private = {name for klass in LltTrainer.__mro__[:LltTrainer.__mro__.index(Trainer)]
               for name in vars(klass) if name.startswith("_") and not name.startswith("__")
               and callable(getattr(Trainer, name, None))}
    assert private == set(HOOKS)

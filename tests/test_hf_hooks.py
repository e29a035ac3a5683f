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


def test_the_other_transformers_names_llt_relies_on_still_work():
    """RELIED_ON in llt.train.hf_hooks, and the public registries llt extends."""
    from transformers import (MODEL_FOR_CAUSAL_LM_MAPPING, AttentionInterface, AttentionMaskInterface, LlamaConfig,
                              LlamaForCausalLM, TrainingArguments)

    from llt.model import attention
    from llt.train.hf_hooks import RELIED_ON

    assert set(RELIED_ON) == {"AttentionMaskInterface['flash_attention_2']",
                              "TrainingArguments.hf_deepspeed_config.mismatches"}
    attention.register()
    assert AttentionInterface()[attention.NAME] is attention.sdpa_varlen_attention
    assert AttentionMaskInterface()[attention.NAME] is AttentionMaskInterface()["flash_attention_2"]
    assert MODEL_FOR_CAUSAL_LM_MAPPING[LlamaConfig] is LlamaForCausalLM  # runs.load consolidates ZeRO shards with it
    assert Trainer.loss_is_scaled_for_ga is None  # PreferenceTrainer sets it: its loss is a mean over pairs
    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=3, use_cpu=True)
    assert args.train_batch_size == 3  # the sampler's batch size (LltTrainer.run_shape)


def test_deepspeed_mismatches_are_reported_by_hf_as_llt_reads_them(tmp_path):
    pytest.importorskip("deepspeed")
    import json

    from llt.errors import ConfigError
    from llt.train.config import LltTrainingArguments

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu.*per_device_train_batch_size"):
        LltTrainingArguments(output_dir=str(tmp_path / "o"), deepspeed=str(ds), per_device_train_batch_size=4,
                             use_cpu=True)

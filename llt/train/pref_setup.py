"""Which trainer a run gets, and for preference tuning, its reference policy.

`recipes/sft.py` gets `LltTrainer`; `recipes/dpo.py` gets `PreferenceTrainer` with the
reference its flags imply: none for SimPO and ORPO; the model with its LoRA adapter
disabled (no second model in memory); log-probs computed once (`--precompute_ref_logps`);
or, for a full fine-tune without them, a frozen copy of the starting model.
"""

from __future__ import annotations

import copy

from llt.errors import ConfigError


def trainer_class(pref_args, model, model_args, lora_args, args) -> tuple[type, dict]:
    """(trainer class, extra constructor arguments) for the run."""
    from llt.train.trainer import LltTrainer

    if pref_args is None:
        return LltTrainer, {}
    from llt.train.pref_trainer import PreferenceTrainer

    ref_model = None
    if pref_args.needs_reference and not lora_args.use_lora and not pref_args.precompute_ref_logps:
        if args.deepspeed and _zero_stage(args) == 3:
            raise ConfigError("--pref_loss with a reference under ZeRO-3 and no LoRA: a frozen copy of a "
                              "partitioned model is not supported; add --precompute_ref_logps (computed "
                              "once before training) or --use_lora")
        ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(args.device)
    return PreferenceTrainer, {"pref": pref_args, "ref_model": ref_model, "model_path": model_args.model_path}


def _zero_stage(args) -> int:
    cfg = getattr(args, "hf_deepspeed_config", None)
    return int(cfg.config.get("zero_optimization", {}).get("stage", 0)) if cfg is not None else 0

"""Preference tuning (DPO, IPO, SimPO, ORPO) as a training method: pair corpora, llt's
forward returning each trained target's loss, whole pairs per micro-batch, and
`PreferenceTrainer` with the reference its flags imply: none for SimPO and ORPO; the model
with its LoRA adapter disabled (no second model in memory); log-probs computed once
(`--precompute_ref_logps`); or, for a full fine-tune without them, a frozen copy of the
starting model.
"""

from __future__ import annotations

import copy

from llt.errors import ConfigError
from llt.train.methods import (RunArgs, TrainingMethod, install_token_logps, require_pairs, require_token_logps,
                               zero_stage)
from llt.train.preference.config import PreferenceArguments


class Preference(TrainingMethod):
    command = "llt dpo"
    arguments = (PreferenceArguments,)

    def check_flags(self, run: RunArgs) -> None:
        """The pair log-probs come from llt's own forward (`llt.model.loss`): a flag that
        replaces it would leave the loss without them."""
        pref, args = run.extra[0], run.train
        require_token_logps(run, self.command)
        if pref.needs_reference and not run.lora.use_lora and not pref.precompute_ref_logps \
                and zero_stage(args) == 3:
            raise ConfigError("--pref_loss with a reference under ZeRO-3 and no LoRA: a frozen copy of a "
                              "partitioned model is not supported; add --precompute_ref_logps (computed "
                              "once before training) or --use_lora")

    def check_corpora(self, data) -> None:
        require_pairs(data, "recipes/dpo.py")

    def install_loss(self, model, run: RunArgs, n_groups: int) -> bool:
        install_token_logps(model, run, self.command)
        return False  # the loss is per pair, not per corpus

    def collator_options(self) -> dict:
        return {"pairs": True}

    def trainer(self, run: RunArgs, model, common: dict):
        from llt.train.preference.trainer import PreferenceTrainer

        pref, args = run.extra[0], run.train
        ref_model = None
        if pref.needs_reference and not run.lora.use_lora and not pref.precompute_ref_logps:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(args.device)
        return PreferenceTrainer(**common, pref=pref, ref_model=ref_model, model_path=run.model.model_path)


"""The flags of KTO (`llt kto`, recipes/kto.py), beside the shared training flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llt.errors import ConfigError


def _help(text: str, **kw) -> dict:
    return {"metadata": {"help": text}, **kw}


@dataclass
class KtoArguments:
    """The flags of recipes/kto.py beside the SFT recipe's (names and defaults as TRL's KTOConfig)."""

    config_key = "kto_args"  # the group's name in llt_config.json (a class attribute, not a flag)

    kto_loss: Literal["kto", "apo_zero_unpaired"] = field(default="kto", **_help(
        "kto: KTO (Ethayarajh et al. 2024, eq. 7), with the KL estimate from mismatched completions; "
        "apo_zero_unpaired: the unpaired APO-zero loss (D'Oosterlinck et al. 2024), no KL term "
        "(TRL: loss_type)."))
    beta: float = field(default=0.1, **_help("β, the strength of the implied KL penalty (TRL's default 0.1)."))
    desirable_weight: float = field(default=1.0, **_help(
        "Weight of the desirable examples' losses (TRL: desirable_weight); with unequal counts, the KTO "
        "paper keeps desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3]."))
    undesirable_weight: float = field(default=1.0, **_help("Weight of the undesirable examples' losses."))
    precompute_ref_logps: bool = field(default=False, **_help(
        "Compute the reference log-probs of every example and of its mismatched completion once before "
        "training (cached in the run folder, reused on resume): no reference forward per step, and no "
        "frozen copy of the model without LoRA. The mismatched completions are then fixed (each sample "
        "takes those of the next sample in its corpus) instead of drawn from each micro-batch."))
    pairs_as_kto: bool = field(default=False, **_help(
        "Train preference pair corpora (encode_type preference) as KTO examples: each chosen completion "
        "desirable, each rejected one undesirable (as TRL's unpair_preference_dataset)."))

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"--beta must be positive, got {self.beta}")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ConfigError("--desirable_weight and --undesirable_weight must be >= 0")

    @property
    def uses_kl(self) -> bool:
        return self.kto_loss == "kto"

"""The flags of preference tuning (`llt dpo`, recipes/dpo.py), beside the shared training flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llt.errors import ConfigError

REFERENCE_FREE = ("simpo", "orpo")


def _help(text: str, **kw) -> dict:
    return {"metadata": {"help": text}, **kw}


@dataclass
class PreferenceArguments:
    """The flags of recipes/dpo.py beside the SFT recipe's."""

    config_key = "preference_args"  # the group's name in llt_config.json (a class attribute, not a flag)

    pref_loss: Literal["sigmoid", "ipo", "simpo", "orpo"] = field(default="sigmoid", **_help(
        "sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023); simpo: SimPO (Meng et al. "
        "2024, no reference model); orpo: ORPO (Hong et al. 2024, no reference model)."))
    beta: float = field(default=0.1, **_help(
        "β: DPO's KL strength, IPO's τ (the target margin is 1/(2β)), SimPO's reward scale "
        "(its paper uses 2.0-2.5)."))
    simpo_gamma: float = field(default=0.5, **_help(
        "γ, SimPO's target reward margin (TRL: simpo_gamma; the paper uses γ/β around 0.5)."))
    orpo_lambda: float = field(default=0.1, **_help(
        "λ, the weight of ORPO's odds-ratio term against the chosen NLL (TRL calls it beta)."))
    precompute_ref_logps: bool = field(default=False, **_help(
        "Compute the reference log-probs of every pair once before training (cached in the run "
        "folder, reused on resume): no reference forward per step. Without LoRA this also "
        "spares the frozen copy of the model."))

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"--beta must be positive, got {self.beta}")
        if self.precompute_ref_logps and self.pref_loss in REFERENCE_FREE:
            raise ConfigError(f"--precompute_ref_logps: --pref_loss {self.pref_loss} has no reference model")

    @property
    def needs_reference(self) -> bool:
        return self.pref_loss not in REFERENCE_FREE

"""The flags of reward-model training (`llt reward`, recipes/reward.py), beside the shared ones."""

from __future__ import annotations

from dataclasses import dataclass, field

from llt.errors import ConfigError


@dataclass
class RewardArguments:
    """The flags of recipes/reward.py beside the SFT recipe's."""

    config_key = "reward_args"  # the group's name in llt_config.json (a class attribute, not a flag)

    center_rewards_coefficient: float | None = field(default=None, metadata={"help": (
        "Adds this times the mean of (r_chosen + r_rejected)^2 to the loss, keeping rewards centred "
        "on zero (Eisenstein et al. 2023; TRL's RewardConfig field of that name; 0.01 is usual).")})

    def __post_init__(self):
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ConfigError(f"--center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}")

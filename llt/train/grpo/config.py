"""The flags of GRPO, named and defaulting as TRL's GRPOConfig (TRL 1.16)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llt.errors import ConfigError


def _help(text: str, **kw) -> dict:
    return {"metadata": {"help": text}, **kw}


@dataclass
class GrpoArguments:
    """What the GRPO loss and advantages take (generation flags come with the trainer)."""

    config_key = "grpo_args"

    num_generations: int = field(default=8, **_help("G: completions generated per prompt (a group)."))
    max_completion_length: int = field(default=512, **_help(
        "Tokens generated at most per completion; dr_grpo divides by it."))
    temperature: float = field(default=1.0, **_help(
        "Sampling temperature; log-probs are those of the logits divided by it, as sampled."))
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = field(default="dapo", **_help(
        "grpo: each completion's token mean, then the mean over completions; bnpo: the token mean of "
        "the micro-batch; dr_grpo: the token sum over completions x max_completion_length (Dr. GRPO); "
        "dapo: the token sum over the generation batch's tokens (DAPO, TRL's default)."))
    beta: float = field(default=0.0, **_help(
        "Weight of the KL to the reference (k3 estimator per token); 0 skips the reference (TRL's default)."))
    epsilon: float = field(default=0.2, **_help("Clipping: the ratio is kept within [1 - epsilon, 1 + epsilon_high]."))
    epsilon_high: float | None = field(default=None, **_help("Upper clipping bound (DAPO's clip-higher); default epsilon."))
    num_iterations: int = field(default=1, **_help(
        "Optimisation passes over each generation batch (μ); above 1 the ratio is against the "
        "log-probs at generation time."))
    scale_rewards: Literal["group", "batch", "none"] = field(default="group", **_help(
        "Advantages divided by the group's reward std (group), the batch's (batch), or not at all "
        "(none, as Dr. GRPO recommends)."))
    mask_truncated_completions: bool = field(default=False, **_help(
        "Completions cut at max_completion_length (no EOS) take no part in the loss (DAPO)."))
    use_bias_correction_kl: bool = field(default=True, **_help(
        "Multiply the per-token KL by the importance ratio (TRL's default)."))
    reward_weights: list[float] | None = field(default=None, **_help(
        "One weight per reward function (default 1 each)."))

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError(f"--num_generations {self.num_generations}: a group needs at least 2 completions "
                              "for its advantages to be relative to anything")
        if self.max_completion_length < 1 or self.temperature <= 0 or self.num_iterations < 1:
            raise ConfigError("--max_completion_length and --num_iterations must be >= 1 and --temperature > 0")
        if self.beta < 0 or self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ConfigError("--beta, --epsilon and --epsilon_high must be >= 0")

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

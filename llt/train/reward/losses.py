"""The reward model's loss (Bradley-Terry, as TRL's RewardTrainer computes it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, center: float | None = None,
                margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per pair: -log σ(r_c - r_r - margin) + center·(r_c + r_r)² (the batch mean of both is
    TRL's loss; `margin`: the pairs' stored margins, TRL's optional `margin` field).

    Examples:
        >>> round(reward_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 6)  # ln 2
        0.693147
    """
    gap = chosen - rejected
    losses = -F.logsigmoid(gap - margin.to(gap.dtype) if margin is not None else gap)
    if center:
        losses = losses + center * (chosen + rejected) ** 2
    return losses

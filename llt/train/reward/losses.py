"""The reward model's loss (Bradley-Terry, as TRL's RewardTrainer computes it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, center: float | None = None) -> torch.Tensor:
    """Per pair: -log σ(r_c - r_r) + center·(r_c + r_r)² (the batch mean of both is TRL's loss).

    Examples:
        >>> round(reward_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 6)  # ln 2
        0.693147
    """
    losses = -F.logsigmoid(chosen - rejected)
    if center:
        losses = losses + center * (chosen + rejected) ** 2
    return losses

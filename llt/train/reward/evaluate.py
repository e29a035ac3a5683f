"""Held-out pairs for a reward model: the loss, accuracy, margin and rewards over the whole
eval set. Sums over pairs are all-reduced over ranks and divided once, so every pair counts
alike whatever batch it fell in; ranks take the same number of steps (fillers)."""

from __future__ import annotations

import torch

from llt.train.evaluate import held_out_batches
from llt.train.reward.losses import reward_loss

_SUMS = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "pairs")


def held_out_rewards(trainer, model, eval_set, prefix: str = "eval") -> dict:
    """`{prefix}_loss`, `{prefix}_accuracy`, `{prefix}_margin`, `{prefix}_rewards/chosen`,
    `{prefix}_rewards/rejected`, `{prefix}_min_reward`, `{prefix}_mean_reward`, `{prefix}_max_reward`,
    `{prefix}_pairs`."""
    sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=trainer.args.device)
    low = torch.full((), float("inf"), dtype=torch.float64, device=sums.device)
    high = -low.clone()
    for batch in held_out_batches(trainer, model, eval_set):
        c, r, m = trainer.pair_rewards(model, batch, "eval")
        c, r = c.double().to(sums.device), r.double().to(sums.device)
        losses = reward_loss(c, r, trainer.reward.center_rewards_coefficient,
                             m.to(sums.device) if m is not None else None)
        sums += torch.stack([losses.sum(), (c > r).double().sum(), (c - r).sum(), c.sum(), r.sum(),
                             torch.tensor(float(len(c)), dtype=torch.float64, device=sums.device)])
        if len(c):
            low = torch.minimum(low, torch.cat([c, r]).min())
            high = torch.maximum(high, torch.cat([c, r]).max())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    got = dict(zip(_SUMS, sums.tolist()))
    pairs = max(got["pairs"], 1)
    metrics = {f"{prefix}_{k}": got[k] / pairs for k in _SUMS[:-1]}
    metrics[f"{prefix}_mean_reward"] = (got["rewards/chosen"] + got["rewards/rejected"]) / (2 * pairs)
    metrics[f"{prefix}_pairs"] = int(got["pairs"])
    if got["pairs"]:
        metrics[f"{prefix}_min_reward"], metrics[f"{prefix}_max_reward"] = low.item(), high.item()
    return metrics

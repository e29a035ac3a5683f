"""Held-out KTO examples: the loss and TRL's reward metrics over the whole eval set.

Sums over examples are all-reduced over ranks and divided once, so every example counts
alike whatever batch it fell in; the KL estimate is the mean of the batches'. Ranks take the
same number of steps (fillers), as for the SFT held-out loss (`llt.train.evaluate`).
"""

from __future__ import annotations

import torch

from llt.train.evaluate import held_out_batches

_SUMS = ("loss", "examples", "rewards/chosen", "chosen", "rewards/rejected", "rejected", "logps/chosen",
         "logps/rejected", "kl", "batches")


def held_out_examples(trainer, model, eval_set, prefix: str = "eval") -> dict:
    """`{prefix}_loss`, `{prefix}_rewards/chosen|rejected|margins`, `{prefix}_logps/...`,
    `{prefix}_kl` and the example counts."""
    sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=trainer.args.device)
    for batch in held_out_batches(trainer, model, eval_set):
        losses, rewards, labels, logps, kl = trainer.example_terms(model, batch, "eval")
        row = [losses.double().sum(), len(losses), rewards[labels].double().sum(), labels.sum(),
               rewards[~labels].double().sum(), (~labels).sum(), logps[labels].double().sum(),
               logps[~labels].double().sum(), kl, 1]
        sums += torch.stack([torch.as_tensor(x, dtype=torch.float64).to(sums.device) for x in row])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
        sums[-2:] /= torch.distributed.get_world_size()  # each rank saw every batch's KL (all-reduced)
    got = dict(zip(_SUMS, sums.tolist()))
    chosen, rejected = max(got["chosen"], 1), max(got["rejected"], 1)
    metrics = {f"{prefix}_loss": got["loss"] / max(got["examples"], 1),
               f"{prefix}_rewards/chosen": got["rewards/chosen"] / chosen,
               f"{prefix}_rewards/rejected": got["rewards/rejected"] / rejected,
               f"{prefix}_logps/chosen": got["logps/chosen"] / chosen,
               f"{prefix}_logps/rejected": got["logps/rejected"] / rejected,
               f"{prefix}_kl": got["kl"] / max(got["batches"], 1),
               f"{prefix}_examples": int(got["examples"])}
    metrics[f"{prefix}_rewards/margins"] = metrics[f"{prefix}_rewards/chosen"] - metrics[f"{prefix}_rewards/rejected"]
    return metrics

"""Held-out preference pairs: the loss and TRL's reward metrics over the whole eval set.

Sums over pairs (and, for ORPO's NLL, over chosen tokens) are all-reduced over ranks and
divided once, so every pair counts alike whatever batch it fell in. Ranks take the same
number of steps (fillers), as for the SFT held-out loss (`llt.train.evaluate`).
"""

from __future__ import annotations

import torch

from llt.train.evaluate import held_out_batches

_SUMS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
         "logps/chosen", "logps/rejected", "pairs", "nll", "chosen_tokens")


def held_out_pairs(trainer, model, eval_set, prefix: str = "eval") -> dict:
    """`{prefix}_loss`, `{prefix}_rewards/...`, `{prefix}_logps/...` and `{prefix}_pairs`."""
    sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=trainer.args.device)
    for batch in held_out_batches(trainer, model, eval_set):
        terms, lc, lr, nc = trainer.pair_terms(model, batch, "eval")
        c, r = terms.chosen_rewards.double(), terms.rejected_rewards.double()
        zero = torch.zeros((), dtype=torch.float64, device=c.device)
        nll = terms.nll_sum.double() if terms.nll_sum is not None else zero
        targets = terms.nll_targets.double() if terms.nll_targets is not None else zero
        sums += torch.stack([terms.losses.double().sum(), c.sum(), r.sum(), (c > r).double().sum(),
                             (c - r).sum(), lc.double().sum(), lr.double().sum(),
                             torch.tensor(len(c), dtype=torch.float64, device=c.device),
                             nll.to(c.device), targets.to(c.device)]).to(sums.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    got = dict(zip(_SUMS, sums.tolist()))
    pairs = max(got["pairs"], 1)
    loss = got["loss"] / pairs
    if trainer.pref.pref_loss == "orpo":
        loss += got["nll"] / max(got["chosen_tokens"], 1)
    metrics = {f"{prefix}_loss": loss, f"{prefix}_pairs": int(got["pairs"])}
    for key in _SUMS[1:7]:
        metrics[f"{prefix}_{key}"] = got[key] / pairs
    return metrics

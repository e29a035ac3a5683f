"""TRL's GRPO losses on llt's padding-free per-token log-probs.

The completions of a micro-batch lie end to end (each `prompt + completion` a document of
one flat row, as every llt batch); llt's chunked loss gives each completion token's
log-prob under the policy, and `doc` says which completion it belongs to. For token t of
completion i, with advantage A_i (`rewards.advantages`):

    ratio      r_t = exp(log π(t) - log π_old(t))      (π_old: the policy at generation time;
                                                        the current one, detached, when μ = 1)
    clipped    -min(r_t A_i, clip(r_t, 1 - ε, 1 + ε_high) A_i)
    KL (β > 0) β [exp(ref - log π) - (ref - log π) - 1], times r_t (TRL's bias correction)

summed into the micro-batch's loss as TRL's `loss_type` says (tokens outside `mask`, e.g.
the completions `mask_truncated_completions` drops, count for nothing):

* `grpo`: each completion's token mean, then the mean over completions;
* `bnpo`: the mean over the micro-batch's tokens;
* `dr_grpo`: the token sum over (completions x `max_completion_length`);
* `dapo`: the token sum over `dapo_tokens` (TRL: the generation batch's completion tokens
  over the processes, scaled to one accumulation window).

The loss is that of one micro-batch, before the division by the accumulation steps TRL
also applies. Metrics under TRL's names: `kl`, `clip_ratio/low_mean`, `clip_ratio/high_mean`,
`clip_ratio/region_mean` (means over the masked tokens).
"""

from __future__ import annotations

import torch

from llt.train.grpo.config import GrpoArguments


def grpo_loss(args: GrpoArguments, logps: torch.Tensor, doc: torch.Tensor, n_completions: int,
              advantages: torch.Tensor, mask: torch.Tensor | None = None, old_logps: torch.Tensor | None = None,
              ref_logps: torch.Tensor | None = None, dapo_tokens: float | None = None):
    """(loss, metrics) of a micro-batch from its completion tokens' log-probs `logps` [T],
    each token's completion `doc` [T] (0..n_completions-1) and the completions' advantages.

    Examples:
        >>> a = GrpoArguments(loss_type="grpo")
        >>> lp = torch.tensor([-1.0, -2.0, -1.5])
        >>> loss, m = grpo_loss(a, lp, torch.tensor([0, 0, 1]), 2, torch.tensor([1.0, -1.0]))
        >>> loss.item(), m["clip_ratio/region_mean"]  # on-policy: ratio 1, the advantages cancel
        (0.0, 0.0)
    """
    mask = torch.ones_like(logps, dtype=torch.bool) if mask is None else mask
    weight = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps.to(logps.dtype)
    ratio = torch.exp(logps - old)
    adv = advantages.to(logps.dtype)[doc]
    clipped = torch.clamp(ratio, 1 - args.epsilon, 1 + args.clip_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    metrics = {}
    if args.beta != 0.0:
        gap = ref_logps.to(logps.dtype) - logps
        kl = torch.exp(gap) - gap - 1
        if args.use_bias_correction_kl:
            kl = kl * ratio
        per_token = per_token + args.beta * kl
        metrics["kl"] = _masked_mean(kl.detach(), weight)
    total = (per_token * weight).sum()
    if args.loss_type == "grpo":
        sums = torch.zeros(n_completions, dtype=per_token.dtype, device=per_token.device).index_add(
            0, doc, per_token * weight)
        counts = torch.bincount(doc[mask], minlength=n_completions).to(per_token.dtype)
        loss = (sums / counts.clamp(min=1)).mean()
    elif args.loss_type == "bnpo":
        loss = total / weight.sum().clamp(min=1)
    elif args.loss_type == "dr_grpo":
        loss = total / (n_completions * args.max_completion_length)
    else:  # dapo
        loss = total / max(dapo_tokens if dapo_tokens is not None else float(weight.sum()), 1.0)
    low = (ratio < 1 - args.epsilon) & (adv < 0)
    high = (ratio > 1 + args.clip_high) & (adv > 0)
    metrics["clip_ratio/low_mean"] = _masked_mean(low.to(weight.dtype), weight)
    metrics["clip_ratio/high_mean"] = _masked_mean(high.to(weight.dtype), weight)
    metrics["clip_ratio/region_mean"] = _masked_mean((low | high).to(weight.dtype), weight)
    return loss, metrics


def _masked_mean(x: torch.Tensor, weight: torch.Tensor) -> float:
    return float((x * weight).sum() / weight.sum().clamp(min=1))

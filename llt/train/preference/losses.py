"""Preference losses on pair log-probs, as TRL computes them.

Each loss takes, per pair, the policy's summed log-prob of the chosen and the rejected
completion (`lc`, `lr`), their token counts (`nc`, `nr`) and, where it has a reference,
the reference's (`rc`, `rr`). The formulas and reward definitions follow TRL 1.16 (the
correctness anchor: `tests/test_preference.py` compares loss and gradients with TRL's
trainers to 1e-5):

* `sigmoid` (DPO; `DPOTrainer(loss_type="sigmoid")`): -log σ(β[(lc - rc) - (lr - rr)]);
* `ipo` (`DPOTrainer(loss_type="ipo")`): ((lc - rc)/nc - (lr - rr)/nr - 1/(2β))², the
  length-normalised form TRL uses (confirmed with the IPO authors, says TRL);
* `simpo` (`CPOTrainer(loss_type="simpo", cpo_alpha=0)`): -log σ(β(lc/nc - lr/nr) - γ),
  no reference;
* `orpo` (`ORPOTrainer`): the chosen completions' NLL (mean over their tokens) minus
  λ·log σ(log-odds of the length-normalised log-probs), no reference.

Rewards, logged under TRL's names: β·(policy - reference) for sigmoid/ipo; β (simpo) or λ
(orpo) times the length-normalised policy log-prob for the reference-free losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llt.train.preference.config import PreferenceArguments

def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (as TRL's)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass
class PairTerms:
    """Per pair: the loss term and the rewards; `nll`: ORPO's chosen NLL (a scalar), and the
    sum and target count it divides (for evaluation over many batches)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    nll: torch.Tensor | None = None
    nll_sum: torch.Tensor | None = None
    nll_targets: torch.Tensor | None = None


def pair_losses(args: PreferenceArguments, lc, lr, nc, nr, rc=None, rr=None, chosen_nll=None) -> PairTerms:
    """The loss of each pair (see the module docstring); `chosen_nll` is ORPO's NLL term.

    Examples:
        >>> a = PreferenceArguments()
        >>> t = pair_losses(a, torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([2.0]),
        ...                 torch.tensor([2.0]), torch.tensor([-3.0]), torch.tensor([-5.0]))
        >>> round(t.losses.item(), 6)  # the policy is its reference: ln 2
        0.693147
    """
    kind, beta = args.pref_loss, args.beta
    if kind in ("sigmoid", "ipo"):
        cr, rj = lc - rc, lr - rr
        if kind == "sigmoid":
            losses = -F.logsigmoid(beta * (cr - rj))
        else:
            losses = (cr / nc.clamp(min=1) - rj / nr.clamp(min=1) - 1 / (2 * beta)) ** 2
        return PairTerms(losses, beta * cr.detach(), beta * rj.detach())
    ac, ar = lc / nc.clamp(min=1), lr / nr.clamp(min=1)
    if kind == "simpo":
        losses = -F.logsigmoid(beta * (ac - ar) - args.simpo_gamma)
        return PairTerms(losses, beta * ac.detach(), beta * ar.detach())
    ac, ar = ac.float(), ar.float()
    ratio = F.logsigmoid((ac - ar) - (log1mexp(ac) - log1mexp(ar)))
    lam = args.orpo_lambda
    return PairTerms(-lam * ratio, lam * ac.detach(), lam * ar.detach(), chosen_nll)


def split_per_sample(values: torch.Tensor, sample_ids: torch.Tensor) -> list:
    """[(sample id, its documents' values)] from per-document values in batch order and the
    batch's `llt_sample_ids` ([id, documents] per sample)."""
    out, at = [], 0
    for sid, n in sample_ids.tolist():
        out.append((sid, values[at:at + n].float().cpu().numpy()))
        at += n
    return out


def sequence_logps(token_logps: torch.Tensor, docs: torch.Tensor, n_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts per document, from the trained targets' log-probs
    and each target's document number."""
    dtype = torch.promote_types(token_logps.dtype, torch.float32)
    sums = torch.zeros(n_docs, dtype=dtype, device=token_logps.device).index_add(0, docs, token_logps.to(dtype))
    counts = torch.bincount(docs, minlength=n_docs).to(sums.dtype)
    return sums, counts

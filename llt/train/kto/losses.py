"""KTO's losses on per-example log-probs, as TRL's KTOTrainer computes them (TRL 1.16;
`tests/test_kto.py` compares loss and gradients with it to 1e-5).

Per example: the policy's summed completion log-prob `logps` and the reference's `ref`
(log-ratio r = logps - ref), its label (True desirable), and the batch's KL estimate `kl`
(the mean log-ratio of the mismatched completions, over every rank, clamped at 0):

* `kto`: desirable 1 - σ(β(r - kl)), undesirable 1 - σ(β(kl - r));
* `apo_zero_unpaired`: desirable 1 - σ(βr), undesirable σ(βr).

Each is multiplied by its weight (`desirable_weight`, `undesirable_weight`); the batch's
loss is their mean. Rewards, logged under TRL's names, are β·r.
"""

from __future__ import annotations

import torch

from llt.train.kto.config import KtoArguments


def kto_losses(args: KtoArguments, logps: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor,
               kl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss, reward) of each example.

    Examples:
        >>> a = KtoArguments()
        >>> losses, _ = kto_losses(a, torch.tensor([-3.0, -4.0]), torch.tensor([-3.0, -4.0]),
        ...                        torch.tensor([True, False]), torch.tensor(0.0))
        >>> losses.tolist()  # the policy is its reference: 1 - σ(0) each
        [0.5, 0.5]
    """
    ratio = logps - ref
    beta = args.beta
    if args.kto_loss == "kto":
        desirable = 1 - torch.sigmoid(beta * (ratio - kl))
        undesirable = 1 - torch.sigmoid(beta * (kl - ratio))
    else:
        desirable = 1 - torch.sigmoid(beta * ratio)
        undesirable = torch.sigmoid(beta * ratio)
    losses = torch.where(labels, args.desirable_weight * desirable, args.undesirable_weight * undesirable)
    return losses, beta * ratio.detach()

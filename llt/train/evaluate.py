"""The held-out loss: per trained token over the whole eval set, and per corpus.

transformers' evaluation loop averages per-batch mean losses, which weighs a batch of
few trained tokens like a full one; here loss sums and trained-token counts are summed
over batches and all-reduced over ranks, then divided once. Each rank evaluates every
world-th sample, and all ranks take the same number of steps (a rank out of samples
runs a filler whose labels are all -100), as ZeRO-3's gathered forward needs.
"""

from __future__ import annotations

import torch

from llt.data.collate import BatchExtras
from llt.data.dataset import IGNORE_INDEX
from llt.data.sampler import EpochBatchSampler


def held_out_batches(trainer, model, eval_set):
    """This rank's share of `eval_set` batch by batch, in order, the model in eval mode and
    no gradient (every method's held-out metrics; fillers keep ranks in step). Each batch
    is yielded inside the trainer's loss context; the model's mode is restored at the end."""
    args = trainer.args
    sampler = EpochBatchSampler(len(eval_set), args.per_device_eval_batch_size, world_size=args.world_size,
                                rank=args.process_index, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in trainer.loader(eval_set, sampler):
                with trainer.compute_loss_context_manager():
                    yield batch
    finally:
        if was_training:
            model.train()


def held_out_loss(trainer, model, eval_set, prefix: str = "eval") -> dict:
    """`{prefix}_loss`, `{prefix}_tokens` and, with several corpora and llt's chunked loss
    (which returns per-corpus sums), `{prefix}_loss/<name>`."""
    names = eval_set.names
    sums = torch.zeros(len(names) + 1, 2, dtype=torch.float64, device=trainer.args.device)  # [loss, tokens]; last: all
    for batch in held_out_batches(trainer, model, eval_set):
        corpus_counts = BatchExtras.pop(batch, model_takes_groups=trainer.group_loss).corpus_counts
        trained = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        out = model(**batch)
        if trained:  # the loss is a mean over trained tokens; a filler's is 0/0
            sums[-1] += torch.stack([out["loss"].double() * trained, trained.double()])
        if out.get("group_loss") is not None and corpus_counts is not None:
            sums[:-1, 0] += out["group_loss"].double()[:len(names)]
            sums[:-1, 1] += corpus_counts.to(sums.device)[:len(names), 1]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    loss, tokens = sums[-1].tolist()
    metrics = {f"{prefix}_loss": loss / max(tokens, 1), f"{prefix}_tokens": int(tokens)}
    if len(names) > 1 and trainer.group_loss:
        for name, (total, count) in zip(names, sums[:-1].tolist()):
            if count:
                metrics[f"{prefix}_loss/{name}"] = total / count
    return metrics

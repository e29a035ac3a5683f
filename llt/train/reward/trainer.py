"""`RewardTrainer`: `LltTrainer` with the Bradley-Terry loss of a scalar reward model.

A micro-batch holds whole pairs, padding-free, as for preference tuning: each pair's chosen
and rejected sequences are documents 2k and 2k+1 (`data.collate.add_doc_ids`), positions
restarting per document, so no sequence attends to another. One forward of the decoder
gives every document's reward at its last token (`llt.model.reward`); the loss, as TRL's
`RewardTrainer` computes it (tested to 1e-5 with its gradients), is the mean over pairs of
-log σ(r_chosen - r_rejected), plus `center_rewards_coefficient` times the mean of
(r_chosen + r_rejected)². Filler samples (all labels -100, keeping ranks in step) and pairs
left with no completion token drop out of the mean. HF divides by the accumulation steps.

Training logs carry TRL's metrics, averaged since the last log: `accuracy`, `margin`,
`min_reward`, `mean_reward`, `max_reward`, and `rewards/chosen`, `rewards/rejected`.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from llt.data.collate import BatchExtras
from llt.data.dataset import IGNORE_INDEX
from llt.train.reward.config import RewardArguments
from llt.train.reward.losses import reward_loss
from llt.train.trainer import LltTrainer


class RewardTrainer(LltTrainer):
    """`LltTrainer` plus `reward` (the method's flags)."""

    def __init__(self, *args, reward: RewardArguments, **kwargs):
        super().__init__(*args, **kwargs)
        self.reward = reward
        self.loss_is_scaled_for_ga = False  # a mean over pairs: HF divides by the accumulation steps
        self._train_metrics = defaultdict(list)

    def pair_rewards(self, model, inputs: dict, split: str):
        """(chosen rewards, rejected rewards, margins or None) of the micro-batch's real pairs,
        rewards in float32 or wider; margins where the corpus stores them (`--margin_field`)."""
        from llt.model.reward import last_tokens

        extras = BatchExtras.pop(inputs, model_takes_groups=False)
        if split == "train" and extras.counts is not None and self.throughput is not None:
            self.throughput.observe(extras.counts)
        labels = inputs.pop("labels")
        docs = extras.docs.to(labels.device)
        n_docs = int(docs.max().item()) + 1 if docs.numel() else 0
        n_docs += n_docs % 2
        index = last_tokens(inputs["input_ids"], docs, n_docs, self.processing_class.pad_token_id)
        rewards = model(**inputs, llt_reward_index=index).logits
        rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
        trained = torch.bincount(docs[(labels != IGNORE_INDEX) & (docs >= 0)], minlength=n_docs)
        real = (trained[0::2] > 0) & (trained[1::2] > 0)  # fillers and emptied pairs drop out
        margins = extras.margins[0::2].to(rewards.device)[real] if extras.margins is not None else None
        return rewards[0::2][real], rewards[1::2][real], margins

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        split = "train" if model.training else "eval"
        chosen, rejected, margins = self.pair_rewards(model, inputs, split)
        losses = reward_loss(chosen, rejected, self.reward.center_rewards_coefficient, margins)
        # a batch of fillers only: 0, still in the graph (the empty selection keeps it), as ranks need
        loss = losses.mean() if len(losses) else losses.sum()
        if split == "train":
            self._record(chosen.detach(), rejected.detach())
        return (loss, {"loss": loss}) if return_outputs else loss

    def _record(self, c: torch.Tensor, r: torch.Tensor) -> None:
        if not len(c):
            return
        m, both = self._train_metrics, torch.cat([c, r])
        m["accuracy"].append((c > r).float().mean().item())
        m["margin"].append((c - r).mean().item())
        m["min_reward"].append(both.min().item())
        m["mean_reward"].append(both.mean().item())
        m["max_reward"].append(both.max().item())
        m["rewards/chosen"].append(c.mean().item())
        m["rewards/rejected"].append(r.mean().item())

    def log(self, logs: dict, start_time=None) -> None:
        """HF's log; a training log gets the reward metrics averaged since the last one."""
        m = self._train_metrics
        if "loss" in logs and m:
            logs = {**logs, **{k: (min(v) if k == "min_reward" else max(v) if k == "max_reward" else sum(v) / len(v))
                               for k, v in m.items()}}
            m.clear()
        super().log(logs, start_time)

    def held_out_metrics(self, model, eval_set, prefix: str) -> dict:
        from llt.train.reward.evaluate import held_out_rewards

        return held_out_rewards(self, model, eval_set, prefix)

"""A generation batch: the completions of one rank's prompts, scored, with what the loss
needs of each, cut into micro-batches.

`GRPO` generates once per `gradient_accumulation_steps x num_iterations` micro-steps (TRL's
`steps_per_generation` = the accumulation steps): P prompts x G completions = one optimizer
step's micro-batches, trained `num_iterations` times. Micro-batch k holds completions
[k*B, (k+1)*B) (B = --per_device_train_batch_size), each `prompt + completion` one document
of a padding-free batch (llt's collator: no padding, no attention between completions), its
completion tokens the trained targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from llt.data.dataset import IGNORE_INDEX


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]  # one per completion (a prompt repeated G times in a row)
    completion_ids: list[list[int]]
    advantages: torch.Tensor  # [completions]
    mask: list[bool]  # the completion takes part in the loss (mask_truncated_completions drops cut ones)
    dapo_tokens: float  # the generation batch's loss tokens over all ranks / world size (TRL's dapo normalizer)
    old_logps: list[torch.Tensor] | None = None  # per completion: its tokens' log-probs at generation (μ > 1)
    ref_logps: list[torch.Tensor] | None = None  # per completion: the reference's (β > 0)
    extra: dict = field(default_factory=dict)  # for the completions log

    def __len__(self) -> int:
        return len(self.completion_ids)

    def features(self, rows: range) -> list[dict]:
        """The collator's samples for completions `rows`."""
        out = []
        for i in rows:
            p, c = self.prompt_ids[i], self.completion_ids[i]
            out.append({"input_ids": np.array(p + c, dtype=np.int64),
                        "labels": np.array([IGNORE_INDEX] * len(p) + c, dtype=np.int64),
                        "doc_starts": np.array([0])})
        return out

    def micro_batch(self, collator, k: int, size: int) -> dict:
        """Micro-batch `k` (completions [k*size, (k+1)*size)), with `llt_grpo`: what the loss
        takes beside the model's inputs."""
        rows = range(k * size, min((k + 1) * size, len(self)))
        batch = collator(self.features(rows))
        lengths = [len(self.completion_ids[i]) for i in rows]
        token_mask = torch.tensor(np.repeat([self.mask[i] for i in rows], lengths), dtype=torch.bool)
        extra = {"advantages": self.advantages[rows.start:rows.stop].clone(), "mask": token_mask,
                 "dapo_tokens": torch.tensor(float(self.dapo_tokens))}
        for key, per in (("old_logps", self.old_logps), ("ref_logps", self.ref_logps)):
            if per is not None:
                extra[key] = torch.cat([per[i] for i in rows])
        batch["llt_grpo"] = extra
        return batch

    def state(self) -> dict:
        """Everything, for a checkpoint taken part-way through the batch's iterations."""
        return {k: getattr(self, k) for k in ("prompt_ids", "completion_ids", "advantages", "mask", "dapo_tokens",
                                               "old_logps", "ref_logps")}

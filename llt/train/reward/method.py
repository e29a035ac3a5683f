"""Reward models as a training method: pair corpora, a sequence-classification model with one
label (a new score head on a causal checkpoint), the reward read at each sequence's last
token in padding-free batches (`llt.model.reward`), whole pairs per micro-batch, and
`RewardTrainer`'s Bradley-Terry loss.
"""

from __future__ import annotations

from llt.errors import ConfigError, DataError
from llt.train.methods import RunArgs, TrainingMethod, require_pairs
from llt.train.reward.config import RewardArguments


class Reward(TrainingMethod):
    command = "llt reward"
    arguments = (RewardArguments,)
    head = "reward"
    lora_task_type = "SEQ_CLS"  # PEFT then trains the new score head in full (modules_to_save)

    def check_flags(self, run: RunArgs) -> None:
        if run.train.use_liger_kernel:
            raise ConfigError("--use_liger_kernel: Liger's kernels fuse a language-model head, and a reward "
                              "model has none; drop the flag")

    def check_corpora(self, data) -> None:
        require_pairs(data, "recipes/reward.py")
        with_margins = {bool(h.get("has_margins")) for h in data.dataset.headers}
        if len(with_margins) > 1:
            raise DataError("--data_path mixes pair corpora with margins (llt encode --margin_field) and without; "
                            "encode every corpus with a margin field, or none")

    def install_loss(self, model, run: RunArgs, n_groups: int) -> bool:
        from llt.model.reward import supports_reward_forward, use_reward_forward

        reason = supports_reward_forward(model)
        if reason:
            raise ConfigError(f"--model_path {run.model.model_path}: llt reward cannot read per-sequence "
                              f"rewards from this model: {reason}")
        use_reward_forward(model)
        return False

    def collator_options(self) -> dict:
        return {"pairs": True}

    def trainer(self, run: RunArgs, model, common: dict):
        from llt.train.reward.trainer import RewardTrainer

        return RewardTrainer(**common, reward=run.extra[0])

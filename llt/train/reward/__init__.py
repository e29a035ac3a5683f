"""Reward models (Bradley-Terry) on llt pair shards (`llt reward`, recipes/reward.py).

    llt encode --encode_type preference --input_path pairs.jsonl --tokenizer_path MODEL \\
        --output_path out --corpus_name pairs
    accelerate launch recipes/reward.py --config recipes/lora_reward.yaml --model_path MODEL \\
        --data_path out/pairs
    llt score RUN --input_path held_out_pairs.jsonl

`config` (`RewardArguments`, the method's flags), `method` (`Reward`: a sequence-classification
model with one label, pair corpora, per-document rewards), `losses` (Bradley-Terry), `trainer` (`RewardTrainer`: the
loss and TRL's metrics) and `evaluate` (held-out pairs). `llt score` (`llt.score`) runs a
trained or exported reward model on a file of pairs. The steps every method shares are
`llt.train.build` and `llt.train.run`.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`llt reward` / recipes/reward.py: train, and return the exit code."""
    from llt.train.run import run

    return run("reward", argv)


def build_trainer(argv: list[str] | None = None):
    """The reward-model trainer for `argv`, ready to `train()`."""
    from llt.train.build import build_trainer as build

    return build(argv, "reward")

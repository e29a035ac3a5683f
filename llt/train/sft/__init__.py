"""Supervised fine-tuning and continued pre-training (`llt train`, recipes/sft.py).

    accelerate launch recipes/sft.py --config recipes/lora_sft.yaml \\
        --model_path MODEL --data_path out/alpaca

`method` (`SFT`: token corpora, the chunked loss with per-corpus sums, `LltTrainer`); the
steps every method shares are `llt.train.build` and `llt.train.run`.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`llt train` / recipes/sft.py: train, and return the exit code."""
    from llt.train.run import run

    return run("train", argv)


def build_trainer(argv: list[str] | None = None):
    """The SFT trainer for `argv`, ready to `train()` (see `llt.train.build.build_trainer`)."""
    from llt.train.build import build_trainer as build

    return build(argv, "train")

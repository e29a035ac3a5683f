"""GRPO (group-relative policy optimisation: GRPO, BNPO, Dr. GRPO, DAPO) with the user's
reward functions (`llt grpo`, recipes/grpo.py).

    accelerate launch recipes/grpo.py --config recipes/lora_grpo.yaml --model_path MODEL \\
        --input_path prompts.jsonl --reward_funcs rewards.py:exact rewards.py:format

`config` (`GrpoArguments`: TRL's GRPOConfig names and defaults), `prompts` (records read
directly from the sources `llt encode` reads, rendered as at inference), `rewards` (the
user's functions, called as TRL calls them, checked; group-relative advantages),
`generate` (transformers' generate, or a `trl vllm-serve` server), `rollouts` (a
generation batch cut into micro-batches), `sampler` (the prompt order, resumable),
`losses` (TRL's loss types on llt's padding-free per-token log-probs), `method` (`Grpo`)
and `trainer` (`GrpoTrainer`). Equal to TRL's GRPOTrainer: tests/test_grpo.py.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`llt grpo` / recipes/grpo.py: train, and return the exit code."""
    from llt.train.run import run

    return run("grpo", argv)


def build_trainer(argv: list[str] | None = None):
    """The GRPO trainer for `argv`, ready to `train()`."""
    from llt.train.build import build_trainer as build

    return build(argv, "grpo")

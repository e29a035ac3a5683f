"""KTO (Kahneman-Tversky optimisation) on llt example shards (`llt kto`, recipes/kto.py).

    llt encode --encode_type kto --input_path examples.jsonl --tokenizer_path MODEL \\
        --output_path out --corpus_name fb
    accelerate launch recipes/kto.py --config recipes/lora_kto.yaml --model_path MODEL \\
        --data_path out/fb

`config` (`KtoArguments`, the method's flags), `method` (`Kto`: example corpora, or pair
corpora with `--pairs_as_kto`), `collate` (labels and the mismatched completions of the KL
estimate), `losses` (TRL's kto and apo_zero_unpaired), `trainer` (`KtoTrainer`) and
`evaluate` (held-out examples). The steps every method shares are `llt.train.build` and
`llt.train.run`.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`llt kto` / recipes/kto.py: train, and return the exit code."""
    from llt.train.run import run

    return run("kto", argv)


def build_trainer(argv: list[str] | None = None):
    """The KTO trainer for `argv`, ready to `train()`."""
    from llt.train.build import build_trainer as build

    return build(argv, "kto")

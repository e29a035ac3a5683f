"""Preference tuning (DPO, IPO, SimPO, ORPO) on llt pair shards (`llt dpo`, recipes/dpo.py).

    llt encode --encode_type preference --input_path pairs.jsonl --tokenizer_path MODEL \\
        --output_path out --corpus_name pairs
    accelerate launch recipes/dpo.py --config recipes/lora_dpo.yaml --model_path MODEL \\
        --data_path out/pairs --pref_loss sigmoid --beta 0.1

`config` (`PreferenceArguments`, the method's flags), `method` (`Preference`: what it needs
of the corpora, the model and the collator, and which reference policy), `losses` (the
DPO/IPO/SimPO/ORPO losses on pair log-probs), `trainer` (`PreferenceTrainer`), `evaluate`
(held-out pairs) and `ref_cache` (precomputed reference log-probs). The steps every method
shares are `llt.train.build` and `llt.train.run`.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`llt dpo` / recipes/dpo.py: train, and return the exit code."""
    from llt.train.run import run

    return run("dpo", argv)


def build_trainer(argv: list[str] | None = None):
    """The preference trainer for `argv`, ready to `train()`."""
    from llt.train.build import build_trainer as build

    return build(argv, "dpo")

"""Preference tuning (DPO, IPO, SimPO, ORPO) on llt pair shards: the recipe's body.

    llt encode --encode_type preference --input_path pairs.jsonl --tokenizer_path MODEL \\
        --output_path out --corpus_name pairs
    accelerate launch recipes/dpo.py --config recipes/lora_dpo.yaml --model_path MODEL \\
        --data_path out/pairs --pref_loss sigmoid --beta 0.1

The same steps as SFT (`llt.train.sft`: parse, tokenizer, data, model, LoRA, trainer,
train) with the preference flags (`llt.train.preference.PreferenceArguments`) and
`PreferenceTrainer` (`llt.train.pref_trainer`).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from llt.train.sft import main as train_main

    return train_main(argv, preference=True)

"""KTO as a training method: labelled example corpora (or pair corpora read as examples with
`--pairs_as_kto`), llt's forward returning each trained target's loss, the examples'
mismatched completions for the KL estimate (`kto.collate`), and `KtoTrainer` with the
reference its flags imply: the model with its LoRA adapter disabled, log-probs computed once
(`--precompute_ref_logps`, as for DPO: `preference.ref_cache`), or a frozen copy.
"""

from __future__ import annotations

import copy

from llt.errors import ConfigError, DataError
from llt.train.kto.config import KtoArguments
from llt.train.methods import RunArgs, TrainingMethod, install_token_logps, require_token_logps, zero_stage


class Kto(TrainingMethod):
    command = "llt kto"
    arguments = (KtoArguments,)

    def __init__(self):
        self.kto: KtoArguments | None = None
        self.pairs = False  # a pair corpus is read as examples

    def check_flags(self, run: RunArgs) -> None:
        """The example log-probs come from llt's own forward (`llt.model.loss`)."""
        self.kto, args = run.extra[0], run.train
        require_token_logps(run, self.command)
        if self.kto.uses_kl and args.per_device_train_batch_size < 2:
            raise ConfigError("--per_device_train_batch_size 1: KTO estimates its KL term from the other "
                              "examples of a micro-batch, so with one it is the example's own reward (TRL "
                              "refuses it too); use 2 or more, or --kto_loss apo_zero_unpaired")
        if not run.lora.use_lora and not self.kto.precompute_ref_logps and zero_stage(args) == 3:
            raise ConfigError("llt kto under ZeRO-3 without LoRA: a frozen reference copy of a partitioned "
                              "model is not supported; add --precompute_ref_logps (computed once before "
                              "training) or --use_lora (the reference is the adapter disabled)")

    def check_corpora(self, data) -> None:
        kinds = {h.get("encode_type") for h in data.dataset.headers}
        if "preference" in kinds and not self.kto.pairs_as_kto:
            raise DataError("--data_path holds preference pairs (encode_type preference); add --pairs_as_kto to "
                            "train each chosen completion as desirable and each rejected one as undesirable, "
                            "or train them with llt dpo")
        other = kinds - {"kto", "preference"}
        if other:
            raise DataError("recipes/kto.py trains on KTO examples (llt encode --encode_type kto) or, with "
                            f"--pairs_as_kto, preference pairs; --data_path holds {', '.join(sorted(map(str, other)))} "
                            "corpora")
        self.pairs = "preference" in kinds
        if self.kto.precompute_ref_logps and self.kto.uses_kl:  # fixed mismatched completions
            for dataset in [data.dataset] + (data.eval_set.datasets if data.eval_set is not None else []):
                dataset.partner = True

    def install_loss(self, model, run: RunArgs, n_groups: int) -> bool:
        install_token_logps(model, run, self.command)
        return False  # the loss is per example, not per corpus

    def collator_options(self) -> dict:
        return {"pairs": True}  # each position's document number

    def wrap_collator(self, collator):
        from llt.train.kto.collate import KtoCollator

        return KtoCollator(collator, pairs=self.pairs, kl=self.kto.uses_kl, fixed=self.kto.precompute_ref_logps)

    def trainer(self, run: RunArgs, model, common: dict):
        from llt.train.kto.trainer import KtoTrainer

        kto, ref_model = run.extra[0], None
        if not run.lora.use_lora and not kto.precompute_ref_logps:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(run.train.device)
        return KtoTrainer(**common, kto=kto, ref_model=ref_model, model_path=run.model.model_path)


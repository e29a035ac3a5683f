"""The training methods: each is a peer in a folder of its own, and this file lists them.

A method (SFT in `llt.train.sft`, preference tuning in `llt.train.preference`, reward models in
`llt.train.reward`, KTO in `llt.train.kto`) supplies what
is its own, through `TrainingMethod`: its command, its flags, what its corpora must hold,
what it needs the model's forward to return, its collator options and its trainer.
Everything the methods share (parse, tokenizer, data, model, LoRA, callbacks, the run
folder, the launch and teardown) is `llt.train.build` and `llt.train.run`.

Adding a method: a folder with its `TrainingMethod` subclass, and one line in `METHODS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# command name -> "module:class" of its TrainingMethod (imported only when that method runs)
METHODS = {
    "train": "llt.train.sft.method:SFT",
    "dpo": "llt.train.preference.method:Preference",
    "reward": "llt.train.reward.method:Reward",
    "kto": "llt.train.kto.method:Kto",
    "grpo": "llt.train.grpo.method:Grpo",
}


@dataclass
class RunArgs:
    """The parsed flags of a run: the four shared groups, and the method's own (by class)."""

    model: object
    data: object
    lora: object
    train: object
    extra: tuple = field(default_factory=tuple)

    def groups(self) -> dict:
        """Every group by the name `llt_config.json` records it under."""
        out = {"model_args": self.model, "data_args": self.data, "lora_args": self.lora, "args": self.train}
        for group in self.extra:
            out[getattr(group, "config_key", type(group).__name__)] = group
        return out


class TrainingMethod:
    """What a training method supplies to `llt.train.build`. The defaults are SFT's."""

    command = "llt train"  # how messages name the command
    arguments: tuple[type, ...] = ()  # dataclasses of the method's own flags, parsed after the shared ones
    head = "causal"  # the model class it trains (`llt.model.loading.load_model`): "causal" or "reward"
    lora_task_type: str | None = None  # PEFT's task type, when the method needs its own
    reads_corpora = True  # trains on `--data_path` corpora from `llt encode` (GRPO reads prompts itself)

    def data_paths(self, run: RunArgs) -> list[str]:
        """The data every rank must see alike (checked before start-up)."""
        from llt.data.run_data import corpus_specs

        return [s.path for specs in corpus_specs(run.data) for s in specs]

    def load_data(self, run: RunArgs, tokenizer):
        """The run's data (`llt.data.run_data.RunData`): the shards verified, read, checked
        for this method, and their chat template adopted by the tokenizer."""
        from llt.data.run_data import build_data
        from llt.train.checks import adopt_chat_template, verify_on_local_main

        args = run.train
        if run.data.verify_data:
            verify_on_local_main(self.data_paths(run), args)
        data = build_data(run.data, seed=args.data_seed if args.data_seed is not None else args.seed)
        self.check_corpora(data)
        adopt_chat_template(tokenizer, data)  # saved with every checkpoint: export prompts as trained
        return data

    def check_fits(self, data, tokenizer, model, new_ids) -> None:
        """Refuse data the model cannot take (ids beyond its vocabulary, samples beyond its positions)."""
        from llt.train.checks import check_data_fits

        check_data_fits(data.dataset, tokenizer, model, new_ids)

    def check_flags(self, run: RunArgs) -> None:
        """Refuse flag combinations the method cannot train, before any data work."""

    def check_corpora(self, data) -> None:
        """Refuse corpora the method does not train on (`data`: `llt.data.run_data.RunData`)."""

    def install_loss(self, model, run: RunArgs, n_groups: int) -> bool:
        """Give the model the forward the method's loss needs; True when that forward
        returns per-corpus loss sums (`group_loss`) for the mix logs."""
        return False

    def collator_options(self) -> dict:
        """Extra keyword arguments for `llt.data.collate.make_collator`."""
        return {}

    def wrap_collator(self, collator):
        """The collator the trainer uses, given llt's (KTO adds its labels and KL documents)."""
        return collator

    def trainer(self, run: RunArgs, model, common: dict):
        """The Trainer, built from `common` (the keyword arguments every llt trainer takes)."""
        raise NotImplementedError


def require_pairs(data, recipe: str) -> None:
    """Refuse any corpus but preference pairs (for the methods that train on pairs), naming
    the kinds `--data_path` holds."""
    from llt.errors import DataError

    kinds = {h.get("encode_type") for h in data.dataset.headers}
    if kinds != {"preference"}:
        hint = "; train KTO examples with llt kto (recipes/kto.py)" if "kto" in kinds else ""
        raise DataError(f"{recipe} trains on preference pairs (llt encode --encode_type preference); "
                        f"--data_path holds {', '.join(sorted(map(str, kinds - {'preference'})))} corpora{hint}")


def require_token_logps(run: RunArgs, command: str) -> None:
    """Refuse the flags that replace llt's forward, for the methods whose loss reads each
    completion's log-probs from it (`llt.model.loss`: DPO's family, KTO)."""
    from llt.errors import ConfigError

    if not run.model.chunked_loss:
        raise ConfigError(f"--chunked_loss false: {command} computes the completions' log-probs with llt's "
                          "chunked loss (the same values as full logits); drop the flag")
    if run.train.use_liger_kernel:
        raise ConfigError(f"--use_liger_kernel: Liger's fused loss returns one mean loss, and {command} needs "
                          "each completion's log-probs; drop the flag")


def install_token_logps(model, run: RunArgs, command: str) -> None:
    """Give `model` llt's chunked loss, which returns each trained target's loss; a model
    that cannot take it is refused with the reason."""
    from llt.errors import ConfigError
    from llt.model.loss import supports_chunked_loss, use_chunked_loss

    reason = supports_chunked_loss(model)
    if reason:
        raise ConfigError(f"--model_path {run.model.model_path}: {command} reads log-probs through llt's "
                          f"chunked loss, which this model cannot use: {reason}")
    use_chunked_loss(model)


def zero_stage(args) -> int:
    """The DeepSpeed ZeRO stage the run trains under (0: none)."""
    cfg = getattr(args, "hf_deepspeed_config", None)
    return int(cfg.config.get("zero_optimization", {}).get("stage", 0)) if cfg is not None else 0


def get_method(name: str) -> TrainingMethod:
    """The method registered under `name` (a key of `METHODS`)."""
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()

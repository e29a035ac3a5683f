"""PEFT LoRA on the training model, configured by `--lora_config_path` (a JSON of
`peft.LoraConfig` fields: every field passes through, DoRA, rsLoRA, `modules_to_save` and
`target_modules: "all-linear"` included); rows of `--add_tokens` are trained too."""

from __future__ import annotations

import json

import torch

from llt.errors import ConfigError
from llt.resources import user_or_shipped


def _module_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


def apply_lora(model, lora_args, new_token_ids: list[int], task_type: str | None = None):
    """Wrap `model` in a PEFT LoRA adapter from `--lora_config_path`; rows of added
    tokens are trained too (PEFT's trainable_token_indices), in the input embedding and,
    when it is not tied to it, the output head. `task_type` (a method's own, e.g. SEQ_CLS
    for a reward model, whose new score head PEFT then trains in full as a module to
    save) replaces the file's."""
    from peft import LoraConfig, get_peft_model

    path = user_or_shipped(lora_args.lora_config_path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--lora_config_path {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--lora_config_path {path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"--lora_config_path {path}: a JSON object of peft.LoraConfig fields, not {type(cfg).__name__}")
    check_fields(cfg, path)
    cfg["task_type"] = task_type or cfg.get("task_type", "CAUSAL_LM")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, list):
        have = _module_names(model)
        missing = [t for t in targets if t not in have]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, torch.nn.Linear)})
            raise ConfigError(f"--lora_config_path {path}: target_modules {missing} are not in "
                              f"{type(model).__name__}; its linear layers are {linear}")
    if new_token_ids:
        emb_name = _name_of(model, model.get_input_embeddings())
        indices = {emb_name: list(new_token_ids)}
        out = model.get_output_embeddings()
        if out is not None and out.weight is not model.get_input_embeddings().weight:
            indices[_name_of(model, out)] = list(new_token_ids)
        cfg["trainable_token_indices"] = indices
    try:
        config = LoraConfig(**cfg)
    except TypeError as e:
        raise ConfigError(f"--lora_config_path {path}: {e}") from None
    model = get_peft_model(model, config)
    if getattr(model, "print_trainable_parameters", None):
        model.print_trainable_parameters()
    return model


def check_fields(cfg: dict, path) -> None:
    """Every key must be a `peft.LoraConfig` field (use_dora, use_rslora, modules_to_save,
    target_modules "all-linear", ... all pass through); an unknown one is named, with the
    fields it may have meant."""
    import dataclasses
    import difflib

    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    for key in cfg:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else " (see peft.LoraConfig)"
            raise ConfigError(f"--lora_config_path {path}: {key!r} is not a LoraConfig field{hint}")


def _name_of(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    raise ConfigError("cannot find the embedding module by name")

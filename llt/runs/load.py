"""Loading what training produced as a plain model: a full fine-tune's checkpoint, a LoRA
checkpoint (its base model, grown for added tokens, plus the adapter) or a DeepSpeed ZeRO
checkpoint (its partitioned fp32 weights consolidated on the CPU). `llt export` and
`llt generate` both start here.

A path may be a checkpoint (`checkpoint-N`, holding `trainer_state.json`), a run folder
(its newest checkpoint, or with `best=True` the best by eval loss) or any HF model folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llt.errors import CheckpointError
from llt.runs.folder import TRAINER_STATE, resolve, run_config

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Loaded:
    model: object
    tokenizer: object
    checkpoint: Path
    kind: str  # "full", "lora" or "zero"
    base_model: str | None = None
    info: dict = field(default_factory=dict)
    reward: bool = False  # a reward model (*ForSequenceClassification with one label)


def is_reward_model(ckpt: Path, cfg: dict) -> bool:
    """Whether `ckpt` holds a reward model: an llt run of `llt reward` (its config records
    `reward_args`), a LoRA adapter for sequence classification, or an HF folder whose
    architecture is a sequence classifier."""
    if "reward_args" in cfg:
        return True
    adapter = ckpt / "adapter_config.json"
    if adapter.is_file():
        return json.loads(adapter.read_text()).get("task_type") == "SEQ_CLS"
    config = ckpt / "config.json"
    if config.is_file():
        archs = json.loads(config.read_text()).get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in archs)
    return False


def auto_class(reward: bool):
    """transformers' Auto class for the model: a causal LM, or a sequence classifier."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if reward else AutoModelForCausalLM


def checkpoint_kind(ckpt: Path, weights: str = "auto") -> str:
    if (ckpt / "adapter_config.json").is_file():
        return "lora"
    has_model = any((ckpt / f).is_file() for f in WEIGHT_FILES)
    has_zero = (ckpt / "latest").is_file() or any(ckpt.glob("global_step*"))
    if weights == "zero" or (weights == "auto" and not has_model and has_zero):
        if not has_zero:
            raise CheckpointError(f"{ckpt}: --weights zero, but it holds no DeepSpeed ZeRO shards "
                                  "(global_step*/ and latest); it was saved without --save_optimizer")
        return "zero"
    if not has_model:
        raise CheckpointError(f"{ckpt}: no model weights ({', '.join(WEIGHT_FILES[::2])}), adapter or "
                              "DeepSpeed shards in it")
    return "full"


def _dtype(name: str | None, *configs) -> torch.dtype:
    """`auto`: the dtype the original model was published in (its config), else fp32."""
    if name and name != "auto":
        if name not in DTYPES:
            raise CheckpointError(f"--dtype {name}: choose auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    for cfg in configs:
        if cfg is None:
            continue
        d = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        if isinstance(d, str):
            d = getattr(torch, d, None)
        if isinstance(d, torch.dtype):
            return d
    return torch.float32


def _base_path(ckpt: Path, cfg: dict, base_model: str | None) -> str:
    base = base_model or cfg.get("model_args", {}).get("model_path")
    if not base:
        adapter = json.loads((ckpt / "adapter_config.json").read_text())
        base = adapter.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{ckpt}: a LoRA checkpoint that names no base model; pass --base_model")
    if not Path(base).exists() and Path(base).is_absolute():
        raise CheckpointError(f"{ckpt}: its base model {base} is gone; pass --base_model")
    return base


def load_checkpoint(path: str | Path, dtype: str | None = "auto", merge: bool = True,
                    base_model: str | None = None, weights: str = "auto", best: bool = False) -> Loaded:
    """The model (merged when LoRA and `merge`) and tokenizer a checkpoint holds, in `dtype`;
    a reward model as a sequence classifier."""
    from transformers import AutoConfig, AutoTokenizer

    ckpt = resolve(path, best)
    kind = checkpoint_kind(ckpt, weights)
    cfg = run_config(ckpt)
    reward = is_reward_model(ckpt, cfg)
    auto = auto_class(reward)
    original = cfg.get("model_args", {}).get("model_path")
    try:
        tok = AutoTokenizer.from_pretrained(str(ckpt))
    except (OSError, ValueError):
        src = cfg.get("model_args", {}).get("tokenizer_path") or original or base_model
        if not src:
            raise CheckpointError(f"{ckpt}: holds no tokenizer and names no model to take it from") from None
        tok = AutoTokenizer.from_pretrained(src)
    original_cfg = _config_or_none(original)
    base = None
    if kind == "lora":
        from peft import PeftModel

        base = _base_path(ckpt, cfg, base_model)
        base_cfg = AutoConfig.from_pretrained(base)
        want = _dtype(dtype, base_cfg)
        # Merge in fp32, then cast: merging into bf16 weights rounds the LoRA update away.
        # A reward model's base is the causal LM it started from: the score head comes from the adapter.
        head = {"num_labels": 1, "pad_token_id": tok.pad_token_id} if reward else {}
        model = auto.from_pretrained(base, dtype=torch.float32, **head)
        grow_for_tokenizer(model, tok)
        try:
            model = PeftModel.from_pretrained(model, str(ckpt))
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt}: the adapter does not fit base model {base} ({e}); "
                                  "pass the base it was trained on with --base_model") from None
        if merge:
            model = model.merge_and_unload()
        cast_weights(model, want)
    elif kind == "zero":
        model, want = _load_zero(ckpt, dtype, original_cfg, reward)
    else:
        ck_cfg = AutoConfig.from_pretrained(str(ckpt))
        want = _dtype(dtype, original_cfg, ck_cfg)
        model = auto.from_pretrained(str(ckpt), dtype=want)
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        gen = model.generation_config
        if gen.pad_token_id is None and tok.pad_token_id is not None:
            gen.pad_token_id = tok.pad_token_id
    if hasattr(model, "config"):
        model.config.use_cache = True  # training turned it off; generation wants it
    step = None
    if (ckpt / TRAINER_STATE).is_file():
        step = json.loads((ckpt / TRAINER_STATE).read_text()).get("global_step")
    return Loaded(model, tok, ckpt, kind, base, {"dtype": str(want).replace("torch.", ""), "step": step}, reward)


def _config_or_none(path):
    if not path:
        return None
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def grow_for_tokenizer(model, tok) -> None:
    """Tokens added in training (--add_tokens) lie past the base's embedding table: grow
    it as training did, so the adapter's rows for them fit."""
    from llt.model.loading import add_token_rows, embedding_rows

    rows = embedding_rows(model)
    if len(tok) > rows:
        add_token_rows(model, list(range(rows, len(tok))), old_vocab=rows)


def _load_zero(ckpt: Path, dtype: str | None, original_cfg, reward: bool = False):
    """Consolidate a ZeRO-1/2/3 checkpoint's partitioned fp32 weights on the CPU."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import (MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
                              AutoConfig)

    tag = None
    if not (ckpt / "latest").is_file():
        tags = sorted(p.name for p in ckpt.glob("global_step*") if p.is_dir())
        tag = tags[-1] if tags else None
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt}: cannot consolidate its DeepSpeed shards ({e})") from None
    config = AutoConfig.from_pretrained(str(ckpt))
    want = _dtype(dtype, original_cfg, config)
    mapping = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING if reward else MODEL_FOR_CAUSAL_LM_MAPPING
    cls = mapping[type(config)]  # the class the Auto class picks
    model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=torch.float32,
                                      output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if missing or info.get("unexpected_keys"):
        raise CheckpointError(f"{ckpt}: the consolidated weights do not match {config.architectures}: "
                              f"missing {sorted(missing)[:5]}, unexpected {sorted(info.get('unexpected_keys', []))[:5]}")
    cast_weights(model, want)
    return model, want


def cast_weights(model, dtype: torch.dtype) -> None:
    """Cast the parameters only. `model.to(dtype)` would also cast float buffers such as
    RoPE's inverse frequencies, which transformers keeps in fp32 (in bf16 that moved a
    SmolLM2's logits by 0.6)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    if getattr(model, "config", None) is not None:
        model.config.dtype = dtype

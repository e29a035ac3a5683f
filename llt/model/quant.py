"""QLoRA: the base model's linear layers loaded in 4-bit (bitsandbytes NF4/FP4) or 8-bit,
frozen, with LoRA adapters trained on top (`--load_in_4bit --use_lora`).

The flags are TRL's `ModelConfig` names. The quantized model gets PEFT's k-bit preparation
(norms and other small weights in fp32, inputs that require grad so gradient checkpointing
works through frozen layers). The LM head is never quantized (transformers keeps it out),
so llt's chunked loss and padding-free batches work unchanged.
"""

from __future__ import annotations

import logging

import torch

from llt.errors import ConfigError

log = logging.getLogger("llt")
EXTRA = "pip install 'llt[qlora]' (bitsandbytes)"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "uint8": torch.uint8}


def _zero3(train_args) -> bool:
    ds = getattr(train_args, "hf_deepspeed_config", None)
    return bool(ds is not None and ds.is_zero3())


def quantization_config(model_args, train_args, use_lora: bool):
    """The `BitsAndBytesConfig` the flags ask for, or None; a `ConfigError` naming the flag
    when they cannot work."""
    four, eight = model_args.load_in_4bit, model_args.load_in_8bit
    if not (four or eight):
        return None
    flag = "--load_in_4bit" if four else "--load_in_8bit"
    if four and eight:
        raise ConfigError("--load_in_4bit and --load_in_8bit together: choose one")
    if not use_lora:
        raise ConfigError(f"{flag}: quantized weights cannot be trained directly; add --use_lora "
                          "(QLoRA trains LoRA adapters on the frozen quantized base)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"{flag} needs bitsandbytes, which is not installed: {EXTRA}") from None
    train_dtype = torch.bfloat16 if train_args.bf16 else torch.float16 if train_args.fp16 else torch.float32
    return bnb_config(model_args, train_dtype, _zero3(train_args))


def bnb_config(model_args, train_dtype: torch.dtype, zero3: bool = False):
    """The `BitsAndBytesConfig` of the quantization flags (also what `llt export --check`
    rebuilds from a run's saved flags)."""
    from transformers import BitsAndBytesConfig

    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = train_dtype if model_args.bnb_4bit_compute_dtype == "auto" else DTYPES[model_args.bnb_4bit_compute_dtype]
    storage = model_args.bnb_4bit_quant_storage
    storage = (train_dtype if zero3 else torch.uint8) if storage == "auto" else DTYPES[storage]
    if zero3 and storage != train_dtype:
        raise ConfigError(f"--bnb_4bit_quant_storage {model_args.bnb_4bit_quant_storage}: DeepSpeed ZeRO-3 "
                          f"partitions parameters of one dtype; use auto or {str(train_dtype)[6:]}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
                              bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
                              bnb_4bit_quant_storage=storage)


def device_map(train_args):
    """Where from_pretrained puts a quantized model: this rank's GPU, the CPU, or (ZeRO-3,
    which places parameters itself) nowhere."""
    if _zero3(train_args):
        return None
    if not train_args.use_cpu and torch.cuda.is_available():
        return {"": train_args.local_process_index}
    return {"": "cpu"}


def prepare(model, train_args):
    """PEFT's k-bit preparation: small weights in fp32, input gradients for checkpointing."""
    from peft import prepare_model_for_kbit_training

    kwargs = train_args.gradient_checkpointing_kwargs or {"use_reentrant": False}
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=train_args.gradient_checkpointing,
                                           gradient_checkpointing_kwargs=kwargs)


def tensor_bytes(t) -> int:
    """Bytes a parameter or buffer holds, a 4-bit weight's quantization constants included
    (they live on `quant_state`, outside parameters and buffers)."""
    n = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)
    if state is not None:
        n += sum(v.numel() * v.element_size() for v in state.as_dict(packed=True).values() if torch.is_tensor(v))
    return n


def weight_memory(model) -> dict:
    """Bytes of the model's weights (parameters and buffers), and of its base linear layers
    alone: what a 4-bit base quantizes (embeddings, norms and the LM head stay in the
    training dtype, so the whole-model ratio depends on the vocabulary's share)."""
    total = sum(tensor_bytes(t) for t in list(model.parameters()) + list(model.buffers()))
    linear = 0
    for name, module in model.named_modules():
        if type(module).__name__ in ("Linear", "Linear4bit", "Linear8bitLt") and "lora_" not in name \
                and not name.endswith("lm_head") and not any(True for _ in module.children()):
            linear += sum(tensor_bytes(t) for t in module.parameters(recurse=False))
    return {"weight_bytes": total, "linear_bytes": linear}


def describe(model, config, train_dtype: torch.dtype) -> str:
    """What was quantized, and the weight memory against the unquantized model's."""
    import bitsandbytes as bnb

    layers, params = 0, 0
    for module in model.modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            layers += 1
            params += module.in_features * module.out_features
    have = weight_memory(model)
    size = torch.tensor([], dtype=train_dtype).element_size()
    full = sum(_original_numel(p) * size for p in model.parameters())
    full_linear = params * size
    what = (f"4-bit {config.bnb_4bit_quant_type} (compute {str(config.bnb_4bit_compute_dtype)[6:]}, "
            f"double quant {'on' if config.bnb_4bit_use_double_quant else 'off'}, "
            f"storage {str(config.bnb_4bit_quant_storage)[6:]})") if config.load_in_4bit else "8-bit LLM.int8"
    return (f"llt: base quantized to {what} by bitsandbytes: {layers} linear layers, {params / 1e6:.1f}M "
            f"weights in {have['linear_bytes'] / 2**20:.1f} MiB ({have['linear_bytes'] / full_linear:.2f}x "
            f"{str(train_dtype)[6:]}); whole model {have['weight_bytes'] / 2**20:.1f} MiB "
            f"({have['weight_bytes'] / full:.2f}x the {full / 2**20:.1f} MiB of {str(train_dtype)[6:]} weights)")


def _original_numel(p) -> int:
    state = getattr(p, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else p.numel()

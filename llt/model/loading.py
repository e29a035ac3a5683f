"""The model as llt builds it: tokenizer and model loading, attention implementation, dtype,
added tokens, and the model figures the MFU estimate needs (LoRA is `llt.model.lora`)."""

from __future__ import annotations

import logging

import torch

from llt.errors import ConfigError

log = logging.getLogger("llt")


def pick_attn_implementation(requested: str, use_cpu: bool = False, padded: bool = False) -> str:
    """`auto`: flash-attention 2 when the package is installed and a CUDA GPU is in use
    (its varlen kernel takes padding-free batches as they are); on CPU, SDPA per document
    (`llt.model.attention`); else PyTorch's sdpa with a block mask."""
    from llt.model import attention

    attention.register()
    if requested != "auto":
        return requested
    if not use_cpu and torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            return "sdpa"
    return "sdpa" if padded else attention.NAME  # padded batches need a mask-taking kernel


def load_training_tokenizer(model_args):
    """The tokenizer, with `--add_tokens` added as special tokens; returns (tok, new_ids)."""
    from transformers import AutoTokenizer

    path = model_args.tokenizer_path or model_args.model_path
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--tokenizer_path/--model_path {path}: cannot load a tokenizer ({e})") from None
    new = [t for t in split_tokens(model_args.add_tokens) if t not in tok.get_vocab()]
    if new:
        tok.add_tokens(new, special_tokens=True)
    new_ids = tok.convert_tokens_to_ids(new)
    if tok.pad_token is None:
        # Padding positions are masked out of attention and loss; any id will do.
        tok.pad_token = tok.eos_token
    return tok, new_ids


def load_model(model_args, train_args, tok, new_token_ids: list[int], attn: str, quantization=None,
               head: str = "causal"):
    """The model in training dtype with attention `attn` (`pick_attn_implementation`),
    cache off, embeddings grown for added tokens; with `quantization` (a
    BitsAndBytesConfig), its linear layers quantized and the model prepared for k-bit
    training (`llt.model.quant`). `head`: "causal" (a *ForCausalLM) or "reward" (a
    *ForSequenceClassification with one label, its score head new unless the checkpoint
    is already a reward model, and `pad_token_id` set as the class needs it to find each
    sequence's last token)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llt.model import quant

    dtype = torch.bfloat16 if train_args.bf16 else torch.float32
    extra = {"quantization_config": quantization, "device_map": quant.device_map(train_args)} if quantization else {}
    auto, what = AutoModelForCausalLM, "a causal LM"
    if head == "reward":
        auto, what = AutoModelForSequenceClassification, "a sequence-classification (reward) model"
        extra.update(num_labels=1, pad_token_id=tok.pad_token_id)
    try:
        model = auto.from_pretrained(model_args.model_path, dtype=dtype, attn_implementation=attn, **extra)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model_path {model_args.model_path}: cannot load {what} ({e})") from None
    if quantization:
        log.warning(quant.describe(model, quantization, dtype))
        model = quant.prepare(model, train_args)
    # Padding-free batches isolate documents through position_ids, which transformers only
    # honours when no KV cache is built; a cache is useless in training anyway.
    model.config.use_cache = False
    if new_token_ids:
        add_token_rows(model, new_token_ids, old_vocab=len(tok) - len(new_token_ids))
    how = {"flash_attention_2": "flash-attention varlen kernel, one flat row per micro-batch",
           "llt_sdpa_varlen": "SDPA run on each document alone, one flat row per micro-batch",
           "sdpa": "PyTorch SDPA with a block-diagonal causal mask from position_ids",
           "flex_attention": "flex attention with a document block mask from position_ids",
           "eager": "eager attention with a block-diagonal mask from position_ids"}.get(attn, attn)
    log.warning("llt: model %s, dtype %s, attention %s: packed documents isolated by %s",
                model_args.model_path, str(dtype).replace("torch.", ""), attn, how)
    return model


def embedding_rows(model) -> int:
    """Rows of the input embedding; read from the module, since under ZeRO-3 the weight
    is partitioned and its local shape is empty."""
    emb = model.get_input_embeddings()
    return int(getattr(emb, "num_embeddings", None) or emb.weight.shape[0])


@torch.no_grad()
def add_token_rows(model, new_ids: list[int], old_vocab: int) -> None:
    """Grow the embeddings to hold `new_ids` and set each new row to the mean of the
    `old_vocab` existing rows: a new token then starts as an 'average' token, which keeps
    the model's outputs close to what they were (zero or random rows do not)."""
    need = max(new_ids) + 1
    if need > embedding_rows(model):
        model.resize_token_embeddings(need, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not tables[0]:
        tables.append(out.weight)
    with _gathered(tables):
        for w in tables:
            w[new_ids] = w[:old_vocab].mean(dim=0, keepdim=True).to(w.dtype)


def _gathered(params):
    """Full parameters for in-place edits: under ZeRO-3 they are partitioned across
    ranks, so gather them (rank 0 edits, DeepSpeed scatters the result back)."""
    import contextlib
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed
        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return contextlib.nullcontext()


def flops_per_token_info(model) -> dict:
    """What the MFU estimate needs: matmul parameters (all but the input embedding
    lookup, which is a gather) and the attention width times the layer count."""
    cfg = getattr(model, "config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings()
    # ZeRO-3 partitions parameters; ds_numel is the full size.
    numel = lambda p: getattr(p, "ds_numel", None) or p.numel()  # noqa: E731
    n = sum(numel(p) for p in base.parameters())
    out = base.get_output_embeddings()
    tied = out is not None and out.weight is emb.weight
    # A tied head still multiplies by the embedding matrix: count it once, as the head.
    matmul_params = n if tied else n - numel(emb.weight)
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    heads = getattr(cfg, "num_attention_heads", 0) or 0
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", 0) // max(heads, 1))
    return {"matmul_params": int(matmul_params), "layers": int(layers), "attn_width": int(heads * head_dim)}


def split_tokens(values: list[str] | None) -> list[str]:
    """`--add_tokens "<a>,<b>" "<c>"` -> ["<a>", "<b>", "<c>"].

    Examples:
        >>> split_tokens(["<a>,<b>", "<c>"])
        ['<a>', '<b>', '<c>']
    """
    out: list[str] = []
    for v in values or []:
        out += [t.strip() for t in v.split(",") if t.strip()]
    return out

"""Choosing the collator from `--padding` and the model's attention implementation."""

from __future__ import annotations

from llt.data.collate import PaddedCollator, PaddingFreeCollator
from llt.train.attention import is_varlen
from llt.train.config import ConfigError


def make_collator(data_args, dataset, tokenizer, model, n_groups: int = 1):
    if data_args.padding == "free":
        attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
        # Varlen attention (flash-attention, llt's per-document SDPA) costs per document:
        # one flat row, no padding. Masked sdpa/eager cost the square of the row: one row
        # per sample.
        flat = is_varlen(attn)
        return PaddingFreeCollator(flat=flat, flash_kwargs=flat, pad_token_id=tokenizer.pad_token_id,
                                   pad_to_multiple_of=data_args.pad_to_multiple_of, n_groups=n_groups)
    if dataset.packed:
        raise ConfigError(f"--padding {data_args.padding}: the shards under --data_path pack several "
                          "documents per sample, which a padded row would let attend to each other; "
                          "use --padding free")
    pad_to = None
    if data_args.padding == "max_length":
        pad_to = max(h.get("max_length") or 0 for h in dataset.headers) or None
    if is_varlen(getattr(model.config, "_attn_implementation", None) or "sdpa"):
        raise ConfigError(f"--padding {data_args.padding} needs an attention mask, which "
                          f"{model.config._attn_implementation} does not take; use --padding free, "
                          "or --attn_implementation sdpa")
    return PaddedCollator(tokenizer.pad_token_id, data_args.pad_to_multiple_of, pad_to, n_groups)

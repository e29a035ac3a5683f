"""Attention over packed documents on CPU: PyTorch SDPA run per document ("varlen").

With a block-diagonal mask, SDPA still computes every query-key pair of the row and masks
most of them away: for alpaca-length documents packed into 1,024-token rows only ~14% of
the causal pairs are needed, and attention was 30% of a SmolLM2-135M step on CPU (torch
profiler). `llt_sdpa_varlen` takes the document boundaries (`cu_seq_lens_q`, which the
padding-free collator sends in its flat layout, as for flash-attention) and runs causal
SDPA on each document alone. Without boundaries it is plain sdpa.

`attn_implementation="auto"` picks it on CPU; on CUDA, flash-attention's own varlen kernel
(when installed) or sdpa with a block mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "llt_sdpa_varlen"


def sdpa_varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, **kwargs):
    """transformers' attention-function contract: [B, H, T, D] in, ([B, T, H, D], None) out."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    p = dropout if module.training else 0.0
    bounds = cu.tolist()
    outs = [F.scaled_dot_product_attention(query[:, :, lo:hi], key[:, :, lo:hi], value[:, :, lo:hi],
                                           is_causal=True, dropout_p=p, scale=scaling, enable_gqa=gqa)
            for lo, hi in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation="llt_sdpa_varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_varlen_attention)
    # Like flash-attention, it needs no 4D mask: boundaries come as cu_seq_lens. Both
    # registries are transformers' public extension points for custom attention.
    AttentionMaskInterface.register(NAME, AttentionMaskInterface()["flash_attention_2"])


def is_varlen(attn: str) -> bool:
    """Whether `attn` takes document boundaries as cu_seq_lens (one flat row, no padding)."""
    return attn.startswith("flash_attention") or attn == NAME

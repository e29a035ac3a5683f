"""The causal-LM loss on trained positions only, in chunks, without full-vocabulary logits.

transformers' causal LMs compute logits for every position ([tokens, vocab] in fp32, 2.5 GB
for 4,096 tokens of a 151,665-token vocabulary) and then mask most of them out of the
loss: prompts, padding and document starts. `use_chunked_loss(model)` replaces the
instance's `forward` (only when labels are given) with: the decoder's hidden states ->
the positions whose next-token label is trained -> `lm_head` and cross-entropy a chunk
at a time. Fewer positions means less lm_head and softmax work; when there is more than
one chunk, each chunk's logits are recomputed in the backward pass instead of kept, so
memory holds one chunk of logits instead of all of them.

Calling `lm_head` as a module keeps LoRA or trainable-token wrappers and ZeRO-3's
parameter gathering working; going through the model's own `forward` keeps DDP's and
DeepSpeed's hooks. The loss equals transformers' (sum over trained targets divided by
`num_items_in_batch`, or their count), tested to 1e-5 with its gradients; for a
mixture-of-experts model trained with `output_router_logits`, plus its router's
load-balancing term, as the model's own forward adds it.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

log = logging.getLogger("llt")
CHUNK_BYTES = 2 ** 27  # 128 MB of fp32 logits per chunk (~3x that while its backward runs)


@dataclass
class LltCausalLMOutput(CausalLMOutputWithPast):
    """The loss output, plus the summed loss of each corpus (`group_loss`) when the batch
    carried `llt_groups`."""

    group_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # a MoE router's load-balancing loss (already added to `loss`)
    token_losses: torch.Tensor | None = None  # per trained target, in order (llt_token_losses=True)


def _chunk_loss(lm_head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32; fp64 stays
    return F.cross_entropy(logits, targets, reduction="none")


def chunked_token_losses(lm_head, hidden: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy of `lm_head(hidden)` against `targets` ([N, H], [N]) at each row: [N]."""
    rows = chunk_rows or max(64, CHUNK_BYTES // (4 * vocab_size))
    if hidden.shape[0] <= rows:
        return _chunk_loss(lm_head, hidden, targets)
    return torch.cat([checkpoint(_chunk_loss, lm_head, hidden[lo:lo + rows], targets[lo:lo + rows],
                                 use_reentrant=False)
                      for lo in range(0, hidden.shape[0], rows)])


def supports_chunked_loss(model) -> str | None:
    """None when `model` has the standard decoder + lm_head layout, else the reason not."""
    if not hasattr(model, "model") or model.get_output_embeddings() is None:
        return f"{type(model).__name__} has no .model decoder or output embedding"
    if getattr(model.config, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    if getattr(model.config, "logits_scaling", None) not in (None, 1, 1.0):
        return "the model scales its logits"
    if getattr(model.config, "output_router_logits", False) and _router_aux(model) is None:
        return (f"{type(model).__name__} adds a router load-balancing loss in a way llt does not know "
                "(transformers' MoE models define load_balancing_loss_func beside the model)")
    return None


def _router_aux(model):
    """For a mixture-of-experts model trained with its router's load-balancing loss
    (`config.output_router_logits`): a function of the decoder's router logits giving the
    term the model's own forward adds to the loss (`router_aux_loss_coef * aux`), computed
    as transformers' MoE models compute it; None where the model does not follow that form."""
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)
    needed = ("num_experts", "num_experts_per_tok", "router_aux_loss_coef")
    if fn is None or not all(hasattr(model, a) for a in needed):
        return None

    def term(router_logits, attention_mask):
        aux = fn(router_logits, model.num_experts, model.num_experts_per_tok, attention_mask)
        return model.router_aux_loss_coef * aux, aux
    return term


def use_chunked_loss(model, chunk_rows: int | None = None, n_groups: int = 1) -> bool:
    """Install the chunked loss on `model` (a *ForCausalLM); False, with a log line, where
    its layout is not the standard one and the stock loss stays.

    A forward given `llt_groups` (each position's corpus, from the collator) also returns
    `group_loss`, the [n_groups] loss sums per corpus, detached: the logs show each
    corpus's loss at no extra lm_head work. With `llt_token_losses=True` it returns each
    trained target's loss too (`token_losses`, with its graph): preference losses sum them
    per completion. `llt_temperature` T scores the logits divided by T (GRPO's log-probs of
    the distribution it samples from)."""
    reason = supports_chunked_loss(model)
    if reason:
        log.info("llt: stock loss (full logits): %s", reason)
        return False
    stock = model.forward
    router = _router_aux(model) if getattr(model.config, "output_router_logits", False) else None

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None,
                num_items_in_batch=None, llt_groups=None, llt_token_losses=False, llt_temperature=None,
                **kwargs):
        if labels is None or kwargs.get("return_dict") is False:
            return stock(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         labels=labels, num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs.pop("logits_to_keep", None)
        if router is not None:  # a MoE's load-balancing loss needs the router logits
            kwargs["output_router_logits"] = True
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **kwargs)
        hidden = out.last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)
        keep = targets != -100
        rows = hidden[keep]
        if llt_temperature not in (None, 1, 1.0):  # log-probs of the sampling distribution (GRPO): logits / T
            if getattr(self.get_output_embeddings(), "bias", None) is not None:
                raise ValueError("llt_temperature: the LM head has a bias, which dividing the hidden states skips")
            rows = rows / llt_temperature
        per_token = chunked_token_losses(self.get_output_embeddings(), rows, targets[keep],
                                         self.config.vocab_size, chunk_rows)
        loss = per_token.sum()
        group_loss = None
        if llt_groups is not None:
            groups = llt_groups[:, 1:].to(hidden.device)[keep]
            group_loss = torch.zeros(n_groups, dtype=torch.float32, device=loss.device).index_add_(
                0, groups, per_token.detach().float())
        # With no trained position (a filler batch), the sum is 0: divide by 1, not 0.
        denom = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        if torch.is_tensor(denom):
            denom = denom.to(loss.device)
        loss = loss / denom
        aux = None
        if router is not None:
            added, aux = router(out.router_logits, attention_mask)
            loss = loss + added.to(loss.device)
        return LltCausalLMOutput(loss=loss, logits=None, group_loss=group_loss, aux_loss=aux,
                                 token_losses=per_token if llt_token_losses else None)

    model.forward = types.MethodType(forward, model)
    return True

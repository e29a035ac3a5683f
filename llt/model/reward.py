"""A reward model's forward on padding-free batches: one scalar per document.

transformers' *ForSequenceClassification reads one score per row, at the row's last token
that is not the pad token. In llt's padding-free batches a row holds many documents (a
pair's chosen and rejected, several pairs packed), so `use_reward_forward(model)` gives the
instance a forward that, given `llt_reward_index` (a flat position per document), runs the
decoder once and applies the score head at those positions only. Positions follow
transformers' rule (`last_tokens`): the same reward as the stock class on each document
alone, so an exported model scores a conversation as it was scored in training.

Going through the model's own `forward` (replaced on the instance, as `llt.model.loss`
does) keeps PEFT's, DDP's and DeepSpeed's hooks; calling `score` as a module keeps PEFT's
trained copy of the head (`modules_to_save`).
"""

from __future__ import annotations

import types

import torch
from transformers.modeling_outputs import SequenceClassifierOutputWithPast


def supports_reward_forward(model) -> str | None:
    """None when `model` is a decoder + `score` head, else why not."""
    prefix = getattr(model, "base_model_prefix", None)
    if not isinstance(getattr(model, "score", None), torch.nn.Module) or not hasattr(model, prefix or ""):
        return f"{type(model).__name__} has no decoder ({prefix!r}) and `score` head"
    return None


def last_tokens(input_ids: torch.Tensor, docs: torch.Tensor, n_docs: int, pad_token_id: int | None) -> torch.Tensor:
    """The flat position (into input_ids.reshape(-1)) of each document's reward token: its last
    token that is not `pad_token_id`, as transformers' sequence classifiers read it; a
    document of pad tokens only reads its first. `docs`: each position's document (-1: none).

    Examples:
        >>> ids = torch.tensor([[5, 6, 0, 7, 0, 9]])
        >>> last_tokens(ids, torch.tensor([[0, 0, 0, 1, 1, 2]]), 3, pad_token_id=0).tolist()
        [1, 3, 5]
        >>> last_tokens(ids, torch.tensor([[0, 0, 0, 1, 1, 2]]), 3, pad_token_id=None).tolist()
        [2, 4, 5]
    """
    flat_ids, flat_docs = input_ids.reshape(-1), docs.reshape(-1).to(input_ids.device)
    pos = torch.arange(flat_ids.numel(), device=flat_ids.device)
    real = flat_docs >= 0
    first = torch.full((n_docs,), flat_ids.numel(), device=pos.device, dtype=pos.dtype).scatter_reduce(
        0, flat_docs[real], pos[real], "amin")
    keep = real & (flat_ids != pad_token_id) if pad_token_id is not None else real
    last = torch.full((n_docs,), -1, device=pos.device, dtype=pos.dtype).scatter_reduce(
        0, flat_docs[keep], pos[keep], "amax")
    # a document absent from the batch (an odd count's partner) reads position 0: it is dropped later
    return torch.where(last >= 0, last, first.clamp(max=max(flat_ids.numel() - 1, 0)))


def use_reward_forward(model) -> None:
    """Give `model` (a *ForSequenceClassification) the per-document forward: with
    `llt_reward_index`, `logits` are the documents' rewards [n_docs]; without, the stock
    forward (one score per row, as transformers computes it)."""
    stock = model.forward

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, llt_reward_index=None, **kwargs):
        if llt_reward_index is None:
            return stock(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        for unused in ("labels", "output_attentions", "output_hidden_states", "return_dict", "use_cache"):
            kwargs.pop(unused, None)
        out = getattr(self, self.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                    position_ids=position_ids, use_cache=False, **kwargs)
        hidden = out.last_hidden_state.flatten(0, 1)[llt_reward_index.to(out.last_hidden_state.device)]
        return SequenceClassifierOutputWithPast(logits=self.score(hidden).squeeze(-1))

    model.forward = types.MethodType(forward, model)

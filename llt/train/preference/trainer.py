"""`PreferenceTrainer`: `LltTrainer` with a preference loss over pair samples.

A micro-batch holds whole pairs, padding-free: each pair's chosen and rejected sequences are
documents 2k and 2k+1 of the batch (`data.collate.add_doc_ids`), with positions restarting
per document, so no sequence attends to another. One forward of the policy (and, for
DPO/IPO, one of the reference) runs llt's chunked loss, which returns the loss of each
trained target without full-vocabulary logits; summed per document, these are the
completions' log-probs (`preference.sequence_logps`).

The reference policy: with LoRA, the model with its adapter disabled (no second model in
memory); for a full fine-tune, a frozen copy; with `--precompute_ref_logps`, log-probs
computed once before training (`ref_logps`). Filler samples (all labels -100, used to keep
ranks in step) and pairs left with no completion token drop out of the mean.

The loss of a micro-batch is the mean over its pairs, and HF divides it by the gradient
accumulation steps, as TRL's trainers do; metrics are logged under TRL's names.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from llt.data.collate import BatchExtras
from llt.data.dataset import IGNORE_INDEX
from llt.train.preference.config import PreferenceArguments
from llt.train.preference.losses import pair_losses, sequence_logps, split_per_sample
from llt.train.trainer import LltTrainer


class PreferenceTrainer(LltTrainer):
    """`LltTrainer` plus `pref` (the loss and its flags), `ref_model` (a frozen copy, for a
    full fine-tune without precomputed log-probs) and `ref_logps` (precomputed, by split)."""

    def __init__(self, *args, pref: PreferenceArguments, ref_model=None, ref_logps=None,
                 model_path: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.pref, self.ref_model, self.ref_logps = pref, ref_model, ref_logps
        self.model_path = model_path
        self.loss_is_scaled_for_ga = False  # a mean over pairs: HF divides by the accumulation steps
        self._train_metrics = defaultdict(list)  # averaged into each training log, then cleared

    # ---- the pair log-probs ----
    def pair_logps(self, model, inputs: dict, docs: torch.Tensor, nll: bool = False):
        """(summed log-probs, token counts) of each document's completion; with `nll`, also
        the chosen sequences' summed NLL and target count over prompt and completion alike
        (ORPO's NLL term, as TRL's ORPOTrainer computes it)."""
        labels = inputs["labels"]
        docs = docs.to(labels.device)
        if nll:  # every token of a chosen sequence but its first is a target
            starts = torch.zeros_like(docs, dtype=torch.bool)
            starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
            starts[:, 0] = True
            chosen = (docs >= 0) & (docs % 2 == 0) & ~starts
            labels = torch.where(chosen, inputs["input_ids"], labels)
        out = model(**{**inputs, "labels": labels}, llt_token_losses=True)
        keep = labels[:, 1:] != IGNORE_INDEX
        completion = (inputs["labels"][:, 1:] != IGNORE_INDEX)[keep]
        doc_of = docs[:, 1:][keep]
        n_docs = int(docs.max().item()) + 1 if docs.numel() else 0
        n_docs += n_docs % 2
        sums, counts = sequence_logps(-out.token_losses[completion], doc_of[completion], n_docs)
        if not nll:
            return sums, counts
        return sums, counts, out.token_losses[doc_of % 2 == 0].sum(), (doc_of % 2 == 0).sum()

    def reference_logps(self, model, inputs: dict, docs: torch.Tensor, sample_ids, split: str):
        if self.ref_logps is not None:
            return self.ref_logps[split].lookup(sample_ids, docs.device)
        with torch.no_grad():
            if self.ref_model is not None:
                return self.pair_logps(self.ref_model, inputs, docs)[0]
            with self._adapter_disabled(model):
                return self.pair_logps(model, inputs, docs)[0]

    def reference_parts(self, model, batch: dict) -> list:
        """(sample id, its documents' log-probs) of each sample of `batch`, for the cache
        of `--precompute_ref_logps` (`ref_cache`); the caller disables the adapter."""
        extras = BatchExtras.pop(batch, model_takes_groups=False)
        sums, _ = self.pair_logps(model, batch, extras.docs)
        return split_per_sample(sums, extras.sample_ids)

    def _adapter_disabled(self, model):
        peft_model = self.accelerator.unwrap_model(model)
        if not hasattr(peft_model, "disable_adapter"):
            return contextlib.nullcontext()  # the reference is the model itself (precomputing at step 0)
        return peft_model.disable_adapter()

    def _precompute(self, model) -> None:
        """Before the first step (the wrapped model is ready then, ZeRO-3 included)."""
        from llt.train.preference.ref_cache import precompute

        lora = hasattr(self.accelerator.unwrap_model(model), "disable_adapter")
        self.ref_logps = precompute(self, model, self.model_path, can_compute=lora or self.state.global_step == 0)

    # ---- the loss ----
    def pair_terms(self, model, inputs: dict, split: str):
        if self.pref.precompute_ref_logps and self.ref_logps is None:
            self._precompute(model)
        extras = BatchExtras.pop(inputs, model_takes_groups=False)
        if split == "train" and extras.counts is not None and self.throughput is not None:
            self.throughput.observe(extras.counts)
        orpo = self.pref.pref_loss == "orpo"
        sums, counts, *chosen_nll = self.pair_logps(model, inputs, extras.docs, nll=orpo)
        lc, lr, nc, nr = sums[0::2], sums[1::2], counts[0::2], counts[1::2]
        real = (nc > 0) & (nr > 0)  # fillers and emptied pairs carry no completion token
        rc = rr = nll = None
        if self.pref.needs_reference:
            ref = self.reference_logps(model, inputs, extras.docs, extras.sample_ids, split)
            rc, rr = ref[0::2], ref[1::2]
            rc, rr = rc[real], rr[real]
        if orpo:  # fillers have no target: they add nothing to either sum
            nll = chosen_nll[0] / chosen_nll[1].clamp(min=1)
        terms = pair_losses(self.pref, lc[real], lr[real], nc[real], nr[real], rc, rr, nll)
        if orpo:
            terms.nll_sum, terms.nll_targets = chosen_nll[0].detach(), chosen_nll[1]
        return terms, lc[real].detach(), lr[real].detach(), nc[real]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        split = "train" if model.training else "eval"
        terms, lc, lr, _ = self.pair_terms(model, inputs, split)
        n = len(terms.losses)
        loss = terms.losses.sum() / max(n, 1)  # a batch of fillers only: 0, with the graph
        if terms.nll is not None:
            loss = loss + terms.nll
        if split == "train":  # evaluation computes its own over the whole set (preference.evaluate)
            self._record(terms, lc, lr)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _record(self, terms, lc, lr) -> None:
        if not len(terms.losses):
            return
        m = self._train_metrics
        c, r = terms.chosen_rewards, terms.rejected_rewards
        m["rewards/chosen"].append(c.mean().item())
        m["rewards/rejected"].append(r.mean().item())
        m["rewards/accuracies"].append((c > r).float().mean().item())
        m["rewards/margins"].append((c - r).mean().item())
        m["logps/chosen"].append(lc.mean().item())
        m["logps/rejected"].append(lr.mean().item())
        if terms.nll is not None:
            m["nll_loss"].append(terms.nll.item())

    def log(self, logs: dict, start_time=None) -> None:
        """HF's log; a training log gets the preference metrics averaged since the last one
        (as TRL's trainers log them). Evaluation computes its own over the whole set."""
        m = self._train_metrics
        if "loss" in logs and m:
            logs = {**logs, **{k: sum(v) / len(v) for k, v in m.items()}}
            m.clear()
        super().log(logs, start_time)

    # ---- evaluation ----
    def held_out_metrics(self, model, eval_set, prefix: str) -> dict:
        from llt.train.preference.evaluate import held_out_pairs

        return held_out_pairs(self, model, eval_set, prefix)

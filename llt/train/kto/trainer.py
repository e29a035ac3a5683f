"""`KtoTrainer`: `LltTrainer` with KTO's loss over labelled examples.

A micro-batch holds whole examples, padding-free, each a document of its own (positions
restart per document, so none attends to another), with its label (`llt_kto_labels`) and,
for the `kto` loss, the mismatched documents of `kto.collate` (`llt_kl`). Forwards, as in
TRL's KTOTrainer: the policy on the mismatched documents (no gradient: the KL estimate is
a constant in the loss), the policy on the examples, and the reference on both. llt's
chunked loss gives each trained target's log-prob without full-vocabulary logits; summed
per document these are the completions' log-probs.

The reference policy: with LoRA, the model with its adapter disabled (no second model in
memory); for a full fine-tune, a frozen copy; with `--precompute_ref_logps`, log-probs
computed once before training (`ref_logps`, with fixed mismatched documents: `kto.collate`). The KL estimate is the mean over the
micro-batch's mismatched documents of policy minus reference log-prob, averaged over ranks
(TRL's gather then mean) and clamped at 0. Fillers (all labels -100, keeping ranks in step)
drop out. The loss of a micro-batch is the mean over its examples, and HF divides it by the
gradient accumulation steps, as TRL does; metrics are logged under TRL's names.
"""

from __future__ import annotations

from collections import defaultdict

import contextlib

import numpy as np
import torch

from llt.data.collate import BatchExtras
from llt.data.dataset import IGNORE_INDEX
from llt.train.kto.config import KtoArguments
from llt.train.kto.losses import kto_losses
from llt.train.preference.losses import sequence_logps, split_per_sample
from llt.train.trainer import LltTrainer


class KtoTrainer(LltTrainer):
    """`LltTrainer` plus `kto` (the loss and its flags) and `ref_model` (a frozen copy, for a
    full fine-tune)."""

    def __init__(self, *args, kto: KtoArguments, ref_model=None, ref_logps=None, model_path: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.kto, self.ref_model, self.ref_logps, self.model_path = kto, ref_model, ref_logps, model_path
        self.loss_is_scaled_for_ga = False  # a mean over examples: HF divides by the accumulation steps
        self._train_metrics = defaultdict(list)

    # ---- log-probs ----
    def doc_logps(self, model, batch: dict, docs: torch.Tensor, n_docs: int):
        """(summed log-probs, token counts) of each document's trained tokens."""
        labels = batch["labels"]
        out = model(**batch, llt_token_losses=True)
        keep = labels[:, 1:] != IGNORE_INDEX
        return sequence_logps(-out.token_losses, docs.to(labels.device)[:, 1:][keep], n_docs)

    def reference_logps(self, model, batch: dict, docs: torch.Tensor, n_docs: int) -> torch.Tensor:
        with torch.no_grad():
            if self.ref_model is not None:
                return self.doc_logps(self.ref_model, batch, docs, n_docs)[0]
            with self._adapter_disabled(model):
                return self.doc_logps(model, batch, docs, n_docs)[0]

    def _adapter_disabled(self, model):
        peft_model = self.accelerator.unwrap_model(model)
        if not hasattr(peft_model, "disable_adapter"):
            return contextlib.nullcontext()  # the reference is the model itself (precomputing at step 0)
        return peft_model.disable_adapter()

    # ---- precomputed reference log-probs (`--precompute_ref_logps`, `preference.ref_cache`) ----
    def reference_parts(self, model, batch: dict) -> list:
        """(sample id, the reference log-probs of its examples, then of its mismatched
        documents) of each sample of `batch`; the caller disables the adapter."""
        batch.pop("llt_kto_labels")
        kl = batch.pop("llt_kl", None)
        extras = BatchExtras.pop(batch, model_takes_groups=False)
        main = split_per_sample(self.doc_logps(model, batch, extras.docs, int(extras.sample_ids[:, 1].sum()))[0],
                                extras.sample_ids)
        if kl is None:
            return main
        docs = kl.pop("llt_docs")
        mismatched = split_per_sample(self.doc_logps(model, kl, docs, int(docs.max().item()) + 1)[0],
                                      extras.sample_ids)  # one mismatched document per document
        return [(sid, np.concatenate([a, b])) for (sid, a), (_, b) in zip(main, mismatched)]

    def _cached(self, model, sample_ids: torch.Tensor, split: str, device):
        """The precomputed (examples', mismatched documents') reference log-probs of a batch."""
        if self.ref_logps is None:
            from llt.train.preference.ref_cache import precompute

            lora = hasattr(self.accelerator.unwrap_model(model), "disable_adapter")
            self.ref_logps = precompute(self, model, self.model_path,
                                        can_compute=lora or self.state.global_step == 0)
        values = self.ref_logps[split].lookup(sample_ids, device)
        per = 2 if self.kto.uses_kl else 1
        main, kl, at = [], [], 0
        for n in sample_ids[:, 1].tolist():
            main.append(values[at:at + n])
            kl.append(values[at + n:at + per * n])
            at += per * n
        return torch.cat(main), torch.cat(kl)

    def kl_estimate(self, model, batch: dict, ref: torch.Tensor | None = None) -> torch.Tensor:
        """The mismatched documents' mean log-ratio, averaged over ranks, clamped at 0."""
        docs = batch.pop("llt_docs")
        n = int(docs.max().item()) + 1
        with torch.no_grad():
            policy, counts = self.doc_logps(model, batch, docs, n)
            if ref is None:
                ref = self.reference_logps(model, batch, docs, n)
        ratio = (policy - ref)[counts > 0].double()
        # [this rank's mean, 1]; a rank of fillers only sends [0, 0] and counts for none
        stats = torch.stack([ratio.mean() if len(ratio) else ratio.sum(),
                             torch.tensor(float(len(ratio) > 0), dtype=torch.float64, device=ratio.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stats = stats.to(self.args.device)
            torch.distributed.all_reduce(stats)
        return (stats[0] / stats[1].clamp(min=1)).clamp(min=0).to(policy.dtype).to(policy.device)

    # ---- the loss ----
    def example_terms(self, model, inputs: dict, split: str):
        """(losses, rewards, labels, policy log-probs) of the micro-batch's examples, and the KL estimate."""
        labels = inputs.pop("llt_kto_labels").bool()
        kl_batch = inputs.pop("llt_kl", None)
        extras = BatchExtras.pop(inputs, model_takes_groups=False)
        if split == "train" and extras.counts is not None and self.throughput is not None:
            self.throughput.observe(extras.counts)
        ref = ref_kl = None
        if self.kto.precompute_ref_logps:
            ref, ref_kl = self._cached(model, extras.sample_ids, split, labels.device)
        kl = self.kl_estimate(model, kl_batch, ref_kl) if kl_batch is not None else None
        n = len(labels)
        logps, counts = self.doc_logps(model, inputs, extras.docs, n)
        if ref is None:
            ref = self.reference_logps(model, inputs, extras.docs, n)
        ref = ref.to(logps.device)
        if kl is None:
            kl = torch.zeros((), dtype=logps.dtype, device=logps.device)
        real = counts > 0  # fillers carry no completion token
        labels = labels.to(logps.device)[real]
        losses, rewards = kto_losses(self.kto, logps[real], ref[real], labels, kl)
        return losses, rewards, labels, logps[real].detach(), kl

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        split = "train" if model.training else "eval"
        losses, rewards, labels, logps, kl = self.example_terms(model, inputs, split)
        # a batch of fillers only: 0, still in the graph (the empty selection keeps it), as ranks need
        loss = losses.mean() if len(losses) else losses.sum()
        if split == "train":  # evaluation computes its own over the whole set (kto.evaluate)
            self._record(rewards, labels, logps, kl)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _record(self, rewards, labels, logps, kl) -> None:
        m = self._train_metrics
        m["kl"].append(kl.item())
        if labels.any():
            m["rewards/chosen"].append(rewards[labels].mean().item())
            m["logps/chosen"].append(logps[labels].mean().item())
        if (~labels).any():
            m["rewards/rejected"].append(rewards[~labels].mean().item())
            m["logps/rejected"].append(logps[~labels].mean().item())

    def log(self, logs: dict, start_time=None) -> None:
        """HF's log; a training log gets the KTO metrics averaged since the last one (as TRL
        logs them), with `rewards/margins` the difference of the two reward means."""
        m = self._train_metrics
        if "loss" in logs and m:
            means = {k: sum(v) / len(v) for k, v in m.items()}
            if "rewards/chosen" in means and "rewards/rejected" in means:
                means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
            logs = {**logs, **means}
            m.clear()
        super().log(logs, start_time)

    # ---- evaluation ----
    def held_out_metrics(self, model, eval_set, prefix: str) -> dict:
        from llt.train.kto.evaluate import held_out_examples

        return held_out_examples(self, model, eval_set, prefix)

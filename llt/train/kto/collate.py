"""KTO batches: the examples padding-free, each document's label, and the mismatched
(prompt, completion) documents whose log-probs estimate KTO's KL term.

TRL's KTOTrainer pairs each prompt with the completion of the example before it in the same
batch (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}) (`KL_completion_ids`), so the completions
that estimate the KL are the batch's own, given other prompts. llt builds the same
documents per micro-batch from the stored tokens: a document's prompt is everything before
its first trained token, its completion everything from there (the trained tokens keep
their labels). A pair corpus read as KTO data (`--pairs_as_kto`) holds each prompt twice
(chosen, rejected) side by side, so there a prompt takes the completion of the pair before
(a shift of two documents): never its own prompt's.

Filler samples (all labels -100, keeping ranks in step) have no completion: they take part
in no KL document. A micro-batch of fillers only still gets one KL document, with no
trained token, so every rank runs the same forwards (ZeRO-3 gathers parameters in each).
"""

from __future__ import annotations

import numpy as np
import torch

from llt.data.dataset import IGNORE_INDEX


def doc_parts(feature: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(prompt ids, completion ids, completion labels, trained) for each document of a sample;
    `trained` is False for a document with no trained token."""
    ids, labels = feature["input_ids"], feature["labels"]
    bounds = list(feature["doc_starts"]) + [len(ids)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        lab = labels[lo:hi]
        hit = np.flatnonzero(lab != IGNORE_INDEX)
        cut = int(hit[0]) if len(hit) else hi - lo
        out.append((ids[lo:lo + cut], ids[lo + cut:hi], lab[cut:], len(hit) > 0))
    return out


def doc_labels(feature: dict) -> np.ndarray:
    """Each document's label: stored (KTO corpora), or chosen/rejected by position (pairs
    read as examples)."""
    if "doc_labels" in feature:
        return np.asarray(feature["doc_labels"], bool)
    return np.arange(len(feature["doc_starts"])) % 2 == 0


def kl_features(features: list[dict], shift: int) -> list[dict]:
    """The mismatched documents of a micro-batch: document i's prompt with the completion of
    the trained document `shift` places before it (cyclically), one feature each."""
    docs = [d for f in features for d in doc_parts(f) if d[3]]
    if not docs:  # fillers only: one document, nothing trained (see the module docstring)
        prompt, completion, _, _ = doc_parts(features[0])[0]
        ids = np.concatenate([prompt, completion])
        return [{"input_ids": ids, "labels": np.full_like(ids, IGNORE_INDEX), "doc_starts": np.zeros(1, np.int64)}]
    out = []
    for i, (prompt, *_rest) in enumerate(docs):
        _, completion, labels, _ = docs[(i - shift) % len(docs)]
        out.append({"input_ids": np.concatenate([prompt, completion]),
                    "labels": np.concatenate([np.full(len(prompt), IGNORE_INDEX, labels.dtype), labels]),
                    "doc_starts": np.zeros(1, np.int64)})
    return out


def partner_kl_features(features: list[dict]) -> list[dict]:
    """Fixed mismatched documents, for precomputed reference log-probs: document j of each
    sample takes the completion of document j (cyclically) of the sample after it in its
    corpus (`feature["partner"]`, `ShardDataset.partner`), so the KL documents of a sample
    never depend on the batch it falls in. One per document, fillers included (nothing
    trained), so each sample's values line up with its documents."""
    out = []
    for f in features:
        theirs = [d for d in doc_parts(f["partner"]) if d[3]] or doc_parts(f["partner"])
        for j, (prompt, *_rest) in enumerate(doc_parts(f)):
            _, completion, labels, _ = theirs[j % len(theirs)]
            if f.get("filler"):
                labels = np.full_like(labels, IGNORE_INDEX)
            out.append({"input_ids": np.concatenate([prompt, completion]),
                        "labels": np.concatenate([np.full(len(prompt), IGNORE_INDEX, labels.dtype), labels]),
                        "doc_starts": np.zeros(1, np.int64)})
    return out


class KtoCollator:
    """`base` (llt's padding-free collator with document ids) for the examples, plus
    `llt_kto_labels` (each document's label) and `llt_kl` (the KL documents, collated by
    `base` too) when the loss estimates the KL: from the micro-batch (TRL's rotation), or,
    with `fixed`, from each sample's partner (`partner_kl_features`)."""

    def __init__(self, base, pairs: bool, kl: bool, fixed: bool = False):
        self.base, self.pairs, self.kl, self.fixed = base, pairs, kl, fixed

    def __call__(self, features: list[dict]) -> dict:
        batch = self.base(features)
        batch["llt_kto_labels"] = torch.from_numpy(np.concatenate([doc_labels(f) for f in features]))
        if self.kl:
            kl = self.base(partner_kl_features(features) if self.fixed else
                           kl_features(features, 2 if self.pairs else 1))
            batch["llt_kl"] = {k: v for k, v in kl.items()
                               if not k.startswith("llt_") or k == "llt_docs"}
        return batch

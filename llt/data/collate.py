"""Batches from samples: padding-free (documents end to end) or padded to the batch's longest.

Padding-free is the default: `position_ids` restart at 0 on every document and no
attention mask is passed. transformers turns those positions into a block-diagonal causal
mask (sdpa, eager, flex) or flash-attention's varlen call, so no document attends to
another and (flash-attention) no FLOP is spent on padding. It needs `config.use_cache=False` in training:
with a cache built, transformers ignores the positions and the documents see each other
(measured on transformers 5.24: max logit error 0.4 on a tiny Llama, 1e-7 with it off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llt.data.dataset import IGNORE_INDEX
from llt.errors import DataError

# What the collators add to a batch beside the model's inputs (see `BatchExtras`).
EXTRA_KEYS = ("llt_counts", "llt_corpus_counts", "llt_groups", "llt_docs", "llt_sample_ids", "llt_margins")


def document_positions(length: int, starts: np.ndarray) -> np.ndarray:
    """Position ids that restart at every document start.

    Examples:
        >>> document_positions(7, np.array([0, 3, 5])).tolist()
        [0, 1, 2, 0, 1, 0, 1]
    """
    marks = np.zeros(length, dtype=np.int64)
    marks[starts] = 1
    doc = np.cumsum(marks) - 1
    return np.arange(length, dtype=np.int64) - starts[doc]


def batch_counts(labels: np.ndarray, positions: np.ndarray, real: np.ndarray) -> np.ndarray:
    """[trained tokens, input tokens, causal attention pairs] of a batch, padding excluded.

    A document of length L has L(L+1)/2 causal query-key pairs, the sum of (position+1)
    over its tokens; the throughput callback turns these into FLOPs.
    """
    return np.array([(labels != IGNORE_INDEX).sum(), real.sum(), ((positions + 1) * real).sum()],
                    dtype=np.float64)


def corpus_counts(features: list[dict], n_groups: int) -> np.ndarray:
    """[n_groups, 2]: input tokens and trained tokens of each corpus in the batch
    (filler samples, which only keep ranks in step, count for none)."""
    out = np.zeros((n_groups, 2), dtype=np.float64)
    for f in features:
        if not f.get("filler"):
            out[f["corpus"]] += (len(f["input_ids"]), (f["labels"] != IGNORE_INDEX).sum())
    return out


def _add_groups(batch: dict, features: list[dict], rows: list[tuple[int, int, int]], n_groups: int) -> None:
    """`llt_groups` (each position's corpus, for the per-corpus loss) and `llt_corpus_counts`;
    `rows` gives each feature's (row, start, end) in the batch."""
    if n_groups <= 1:
        return
    groups = np.zeros(batch["labels"].shape, dtype=np.int64)
    for f, (row, lo, hi) in zip(features, rows):
        groups[row, lo:hi] = f.get("corpus", 0)
    batch["llt_groups"] = torch.from_numpy(groups)
    batch["llt_corpus_counts"] = torch.from_numpy(corpus_counts(features, n_groups))


class PaddingFreeCollator:
    """Samples laid out so that documents never attend to each other and no attention mask
    is needed: `position_ids` restart at 0 on every document start.

    `flat=True` puts the whole micro-batch in one row of shape [1, sum of lengths]: no
    padding at all, for flash-attention's varlen kernel, whose cost is per document (with
    `flash_kwargs` it also gets `cu_seq_lens_q/k` and `max_length_q/k`, so transformers
    does not recompute them from the positions in every layer). `flat=False` keeps one
    sample per row and pads rows to the longest with a dummy document (positions 0, 1, ...
    again, labels -100) that no real token can see: for sdpa/eager, whose masked attention
    costs the square of the row length, so one row of B*L tokens would cost B times more.

    Each batch also carries `llt_counts` (see `batch_counts`) and, with `n_groups` > 1
    corpora, `llt_groups` and `llt_corpus_counts` (see `corpus_counts`); `BatchExtras.pop`
    takes them off before the model sees the batch.

    Examples:
        >>> feats = [{"input_ids": np.array([5, 6, 7]), "labels": np.array([-100, 6, 7]),
        ...           "doc_starts": np.array([0])},
        ...          {"input_ids": np.array([8, 9]), "labels": np.array([-100, 9]),
        ...           "doc_starts": np.array([0])}]
        >>> b = PaddingFreeCollator(flat=True)(feats)
        >>> b["input_ids"].tolist(), b["position_ids"].tolist()
        ([[5, 6, 7, 8, 9]], [[0, 1, 2, 0, 1]])
        >>> b["labels"].tolist()
        [[-100, 6, 7, -100, 9]]
        >>> b = PaddingFreeCollator(flat=False, pad_token_id=0)(feats)
        >>> b["input_ids"].tolist(), b["position_ids"].tolist()
        ([[5, 6, 7], [8, 9, 0]], [[0, 1, 2], [0, 1, 0]])
    """

    def __init__(self, flat: bool = True, flash_kwargs: bool = False, pad_token_id: int = 0,
                 pad_to_multiple_of: int | None = None, n_groups: int = 1, doc_ids: bool = False):
        self.flat, self.flash_kwargs = flat, flash_kwargs
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        self.n_groups = n_groups
        self.doc_ids = doc_ids  # preference pairs: each position's document number (see add_doc_ids)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        positions = [document_positions(len(f["input_ids"]), f["doc_starts"]) for f in features]
        if self.flat:
            ids = np.concatenate([f["input_ids"] for f in features])[None]
            labels = np.concatenate([f["labels"] for f in features])[None]
            pos = np.concatenate(positions)[None]
            real = np.ones_like(ids, dtype=bool)
            ends = np.cumsum([len(p) for p in positions])
            rows = [(0, int(e - len(p)), int(e)) for p, e in zip(positions, ends)]
        else:
            width = max(len(f["input_ids"]) for f in features)
            if self.pad_to_multiple_of:
                width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
            n = len(features)
            ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
            labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
            pos = np.tile(np.arange(width, dtype=np.int64), (n, 1))
            real = np.zeros((n, width), dtype=bool)
            for row, (f, p) in enumerate(zip(features, positions)):
                k = len(p)
                ids[row, :k], labels[row, :k], pos[row, :k], real[row, :k] = \
                    f["input_ids"], f["labels"], p, True
                pos[row, k:] -= k  # the padding is a document of its own
            rows = [(r, 0, len(p)) for r, p in enumerate(positions)]
        batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                 "position_ids": torch.from_numpy(pos),
                 "llt_counts": torch.from_numpy(batch_counts(labels, pos, real))}
        if self.flash_kwargs and self.flat:
            starts = np.flatnonzero(pos[0] == 0)
            cu = np.append(starts, pos.shape[1]).astype(np.int32)
            longest = int(np.diff(cu).max())
            batch.update(cu_seq_lens_q=torch.from_numpy(cu), cu_seq_lens_k=torch.from_numpy(cu),
                         max_length_q=longest, max_length_k=longest)
        _add_groups(batch, features, rows, self.n_groups)
        if self.doc_ids:
            add_doc_ids(batch, features, rows)
        return batch


def add_doc_ids(batch: dict, features: list[dict], rows: list[tuple[int, int, int]]) -> None:
    """`llt_docs`: each position's document, numbered through the batch in sample order (-1
    on padding), so a preference pair's chosen and rejected are documents 2k and 2k+1; and
    `llt_sample_ids`: each sample's id (its "index") and number of documents, for
    precomputed reference log-probs.

    Examples:
        >>> b = {"input_ids": torch.zeros(1, 5)}
        >>> add_doc_ids(b, [{"doc_starts": np.array([0, 2]), "index": 7},
        ...                 {"doc_starts": np.array([0]), "index": 3}], [(0, 0, 3), (0, 3, 5)])
        >>> b["llt_docs"].tolist(), b["llt_sample_ids"].tolist()
        ([[0, 0, 1, 2, 2]], [[7, 2], [3, 1]])
    """
    docs = np.full(tuple(batch["input_ids"].shape), -1, dtype=np.int64)
    first = 0
    for f, (row, lo, hi) in zip(features, rows):
        marks = np.zeros(hi - lo, dtype=np.int64)
        marks[f["doc_starts"]] = 1
        docs[row, lo:hi] = first + np.cumsum(marks) - 1
        first += len(f["doc_starts"])
    batch["llt_docs"] = torch.from_numpy(docs)
    batch["llt_sample_ids"] = torch.tensor([[f.get("index", -1), len(f["doc_starts"])] for f in features],
                                           dtype=torch.int64)
    if all("doc_margins" in f for f in features):  # pairs with margins: each document's pair margin
        batch["llt_margins"] = torch.from_numpy(np.concatenate([f["doc_margins"] for f in features]))


class PaddedCollator:
    """Right-padded [batch, longest] tensors with an attention mask (labels -100 on pads).

    `pad_to` pads every batch to that fixed length instead: the seed's pad-to-max_length,
    kept for comparison. Samples packing several documents are refused here: a padded
    row has one causal mask, so its documents would attend to each other.

    Examples:
        >>> c = PaddedCollator(pad_token_id=0)
        >>> b = c([{"input_ids": np.array([5, 6, 7]), "labels": np.array([-100, 6, 7]),
        ...         "doc_starts": np.array([0])},
        ...        {"input_ids": np.array([8, 9]), "labels": np.array([-100, 9]),
        ...         "doc_starts": np.array([0])}])
        >>> b["input_ids"].tolist(), b["attention_mask"].tolist()
        ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]])
        >>> b["labels"].tolist()
        [[-100, 6, 7], [-100, 9, -100]]
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None,
                 pad_to: int | None = None, n_groups: int = 1):
        self.n_groups = n_groups
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_to = pad_to

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if any(len(f["doc_starts"]) > 1 for f in features):
            raise DataError("a sample packs several documents, which a padded batch would let "
                            "attend to each other; train packed data with --padding free")
        longest = max(len(f["input_ids"]) for f in features)
        width = max(self.pad_to or 0, longest)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for row, f in enumerate(features):
            k = len(f["input_ids"])
            ids[row, :k], labels[row, :k], mask[row, :k] = f["input_ids"], f["labels"], 1
        positions = np.cumsum(mask, axis=1) - 1
        batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                 "attention_mask": torch.from_numpy(mask),
                 "llt_counts": torch.from_numpy(batch_counts(labels, positions, mask.astype(bool)))}
        _add_groups(batch, features, [(r, 0, len(f["input_ids"])) for r, f in enumerate(features)],
                    self.n_groups)
        return batch


@dataclass
class BatchExtras:
    """What a collator sends beside the model's inputs, taken off the batch in one place
    (training and evaluation both call `pop`):

    * `counts`: [trained tokens, input tokens, attention pairs] for the throughput meter;
    * `corpus_counts`: [corpora, 2] input and trained tokens per corpus (several corpora);
    * `groups`: each position's corpus, which llt's chunked loss turns into per-corpus
      loss sums; it goes back into the batch only when the model's loss takes it.
    """

    counts: torch.Tensor | None = None
    corpus_counts: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    docs: torch.Tensor | None = None  # preference pairs: see `add_doc_ids`
    sample_ids: torch.Tensor | None = None
    margins: torch.Tensor | None = None  # pairs with margins: each document's pair margin

    @classmethod
    def pop(cls, batch: dict, model_takes_groups: bool) -> "BatchExtras":
        extras = cls(batch.pop("llt_counts", None), batch.pop("llt_corpus_counts", None),
                     batch.pop("llt_groups", None), batch.pop("llt_docs", None),
                     batch.pop("llt_sample_ids", None), batch.pop("llt_margins", None))
        if extras.groups is not None and model_takes_groups:
            batch["llt_groups"] = extras.groups
        return extras


def make_collator(padding: str, dataset, pad_token_id: int, varlen: bool, attn: str,
                  pad_to_multiple_of: int | None = None, n_groups: int = 1, pairs: bool = False):
    """The collator for `--padding` and the model's attention: `varlen` when the attention
    takes document boundaries as cu_seq_lens (flash-attention, llt's per-document SDPA),
    whose cost is per document: one flat row, no padding. Masked sdpa/eager cost the square
    of the row: one row per sample."""
    if padding == "free":
        return PaddingFreeCollator(flat=varlen, flash_kwargs=varlen, pad_token_id=pad_token_id,
                                   pad_to_multiple_of=pad_to_multiple_of, n_groups=n_groups, doc_ids=pairs)
    if pairs:
        raise DataError(f"--padding {padding}: a preference pair is one sample of two documents (chosen, "
                        "rejected), which a padded row would let attend to each other; use --padding free")
    if dataset.packed:
        raise DataError(f"--padding {padding}: the shards under --data_path pack several "
                        "documents per sample, which a padded row would let attend to each other; "
                        "use --padding free")
    pad_to = None
    if padding == "max_length":
        pad_to = max(h.get("max_length") or 0 for h in dataset.headers) or None
    if varlen:
        raise DataError(f"--padding {padding} needs an attention mask, which {attn} does not take; "
                        "use --padding free, or --attn_implementation sdpa")
    return PaddedCollator(pad_token_id, pad_to_multiple_of, pad_to, n_groups)

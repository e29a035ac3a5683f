"""One sample as arrays, and the conversions between a `SampleBatch` (flat arrays, what the
shard writer takes; `llt.shards.writer`) and a list of `Sample`s (what truncation, packing
and preference pairs work on). Before tokenizing, a chat sample is text segments
(`llt.encode.chat.rule.ChatSample`); after, it is one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from llt.shards.writer import SampleBatch

# The per-document values of a sample that has none (most corpora): one shared, read-only
# mapping, so splitting and packing millions of samples allocates nothing for them.
NO_VALUES = MappingProxyType({})


@dataclass
class Sample:
    """One sample outside a batch (used by truncation and packing)."""

    tokens: np.ndarray
    spans: np.ndarray | None  # [k, 2]
    docs: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    doc_arrays: dict[str, np.ndarray] = field(default_factory=lambda: NO_VALUES)  # per-document values (KTO labels, margins)


def split_batch(batch: SampleBatch) -> list[Sample]:
    """The samples of a batch as separate `Sample`s (views, no token copies)."""
    ends = np.cumsum(batch.lengths)
    tok = np.split(batch.tokens, ends[:-1]) if len(batch) else []
    docs = np.split(batch.doc_starts, np.cumsum(batch.doc_counts)[:-1]) if len(batch) else []
    if batch.doc_arrays and len(batch):
        cuts = np.cumsum(batch.doc_counts)[:-1]
        split = {k: np.split(v, cuts) for k, v in batch.doc_arrays.items()}
        values = [{k: v[i] for k, v in split.items()} for i in range(len(tok))]
    else:
        values = [NO_VALUES] * len(tok)
    if batch.spans is None:
        return [Sample(t, None, d, v) for t, d, v in zip(tok, docs, values)]
    spans = np.split(batch.spans, np.cumsum(batch.span_counts)[:-1])
    return [Sample(t, s, d, v) for t, s, d, v in zip(tok, spans, docs, values)]


def join_samples(samples: list[Sample], has_loss_mask: bool) -> SampleBatch:
    """The inverse of `split_batch`."""
    empty64 = np.zeros(0, np.int64)
    return SampleBatch(
        tokens=np.concatenate([s.tokens for s in samples]) if samples else np.zeros(0, np.uint32),
        lengths=np.array([len(s.tokens) for s in samples], np.int64),
        doc_counts=np.array([len(s.docs) for s in samples], np.int64),
        doc_starts=np.concatenate([s.docs for s in samples]) if samples else empty64,
        span_counts=np.array([len(s.spans) for s in samples], np.int64) if has_loss_mask else None,
        spans=(np.concatenate([s.spans for s in samples]).reshape(-1, 2) if samples
               else np.zeros((0, 2), np.int64)) if has_loss_mask else None,
        doc_arrays={k: np.concatenate([s.doc_arrays[k] for s in samples]) for k in
                    (samples[0].doc_arrays if samples else {})},
    )


def wrap_pieces(body: np.ndarray, lens: np.ndarray, prefix: list[int], suffix: list[int]):
    """Put `prefix` before and `suffix` after each piece of a flat id array, vectorised.

    Returns (tokens, lengths) of the wrapped pieces.

    Examples:
        >>> t, n = wrap_pieces(np.array([5, 6, 7]), np.array([2, 1]), [1], [2])
        >>> t.tolist(), n.tolist()
        ([1, 5, 6, 2, 1, 7, 2], [4, 3])
    """
    p, s = len(prefix), len(suffix)
    full = lens + p + s
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(full[:-1], out=starts[1:])
    body_starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=body_starts[1:])
    out = np.empty(int(full.sum()), np.uint32)
    out[np.repeat(starts + p - body_starts, lens) + np.arange(len(body))] = body
    for j, tid in enumerate(prefix):
        out[starts + j] = tid
    for j, tid in enumerate(suffix):
        out[starts + p + lens + j] = tid
    return out, full


def mask_to_spans(mask: np.ndarray) -> np.ndarray:
    """[k, 2] (start, end) runs of True in a bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)

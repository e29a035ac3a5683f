"""`--merge_data`: packing short samples into `max_length` bins, best-fit decreasing.

Each bin keeps the start of every sample it holds as a document boundary, so the trainer
can restart position ids there and keep packed samples from attending to each other.
Packing runs over a window of samples (`window_tokens`), so memory stays flat on corpora
of any size; with a few thousand samples per window best-fit decreasing fills bins to
within a fraction of a percent of the optimum.
"""

from __future__ import annotations

import numpy as np

from llt.shards.writer import SampleBatch
from llt.encode.sample import NO_VALUES, Sample, join_samples, split_batch


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Assign items to bins of `capacity`: largest first, each into the fullest bin it fits.

    Returns the item indices of each bin. O(n * capacity) worst case in numpy, O(n log n)
    typical: a bool table of which remaining capacities have an open bin is searched with
    `argmax`, which stops at the first hit.

    Examples:
        >>> best_fit_decreasing(np.array([6, 5, 4, 3, 2]), 10)
        [[0, 2], [1, 3, 4]]
    """
    if len(lengths) and int(lengths.max()) > capacity:
        raise ValueError(f"an item of length {int(lengths.max())} exceeds the bin capacity {capacity}")
    open_at: list[list[int]] = [[] for _ in range(capacity + 1)]  # remaining -> bin ids
    has = np.zeros(capacity + 1, dtype=bool)
    bins: list[list[int]] = []
    remaining: list[int] = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        r = n + int(has[n:].argmax())
        if has[r]:
            b = open_at[r].pop()
            if not open_at[r]:
                has[r] = False
        else:
            b, r = len(bins), capacity
            bins.append([])
            remaining.append(capacity)
        bins[b].append(i)
        left = r - n
        remaining[b] = left
        if left:  # a full bin never takes another item
            open_at[left].append(b)
            has[left] = True
    return bins


def pack_samples(samples: list[Sample], capacity: int) -> list[Sample]:
    """Concatenate samples into bins; spans and document starts shift with them."""
    lengths = np.array([len(s.tokens) for s in samples], np.int64)
    packed = []
    for members in best_fit_decreasing(lengths, capacity):
        members.sort()  # keep the corpus order inside a bin
        offsets = np.concatenate([[0], np.cumsum(lengths[members])[:-1]])
        parts = [samples[i] for i in members]
        spans = None
        if parts[0].spans is not None:
            spans = np.concatenate([p.spans + off for p, off in zip(parts, offsets)])
        packed.append(Sample(
            tokens=np.concatenate([p.tokens for p in parts]),
            spans=spans,
            docs=np.concatenate([p.docs + off for p, off in zip(parts, offsets)]),
            doc_arrays={k: np.concatenate([p.doc_arrays[k] for p in parts]) for k in parts[0].doc_arrays}
            if parts[0].doc_arrays else NO_VALUES,
        ))
    return packed


class Packer:
    """Buffers batches until `window_tokens`, then emits them packed."""

    def __init__(self, capacity: int, has_loss_mask: bool, window_tokens: int | None = None):
        self.capacity, self.has_loss_mask = capacity, has_loss_mask
        # 4M tokens (16 MB of uint32) gives thousands of samples per window at any length.
        self.window_tokens = window_tokens or max(64 * capacity, 4 << 20)
        self._pending: list[Sample] = []
        self._pending_tokens = 0

    @property
    def pending_tokens(self) -> int:
        """Tokens waiting in the window (for progress reporting)."""
        return self._pending_tokens

    def add(self, batch: SampleBatch | None) -> SampleBatch | None:
        if batch is None or not len(batch):
            return None
        # Copy out of the batch so the window does not pin whole batch arrays.
        self._pending += [Sample(s.tokens.copy(), None if s.spans is None else s.spans.copy(),
                                 s.docs.copy(), {k: v.copy() for k, v in s.doc_arrays.items()}
                                 if s.doc_arrays else NO_VALUES)
                          for s in split_batch(batch)]
        self._pending_tokens += batch.n_tokens
        if self._pending_tokens >= self.window_tokens:
            return self.flush()
        return None

    def flush(self) -> SampleBatch | None:
        if not self._pending:
            return None
        bins = pack_samples(self._pending, self.capacity)
        self._pending, self._pending_tokens = [], 0
        return join_samples(bins, self.has_loss_mask)

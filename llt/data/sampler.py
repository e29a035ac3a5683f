"""The training sample order: deterministic, sharded across ranks, resumable in O(1).

The global order of an epoch depends only on `(seed, epoch)` and the number of
samples, never on the number of processes. Micro-step k of an epoch takes the next
`batch_size * world_size` samples of that order, and rank r takes every world_size-th
of them starting at r. So every sample is trained exactly once per epoch, and the
position `(epoch, step)` saved with a checkpoint says where to go on.

The order is drawn a micro-batch at a time from a seeded bijection of the epoch's
positions (`llt.data.permutation`), mapped to dataset ids by the epoch plan: nothing the
size of the corpus is built, so a rank's memory and start-up do not grow with it.

At the end of an epoch, a rank left without a sample gets a filler (`~i`: a sample
whose labels are all -100): every rank must run the same number of steps or the
gradient all-reduce hangs, and the filler adds nothing to the loss or the gradients.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from llt.data.corpora import permutation

# The sample order's version, recorded in checkpoints: 2 draws it from a seeded bijection
# per batch; 1 (llt before it) from a permutation array per epoch. A checkpoint of
# another version cannot continue its order exactly and is refused on resume.
ORDER_VERSION = 2


class EpochBatchSampler:
    """Yields this rank's micro-batches (lists of dataset indices) for the current epoch.

    `resume_at(epoch, step)` makes the next iteration of `epoch` start at micro-step
    `step`. transformers' Trainer, resuming, wraps the sampler in accelerate's
    `SkipBatchSampler`, which drops the first `step` batches by iterating over them;
    they are yielded as `None`, so dropping them costs nothing instead of building
    millions of index lists.

    Examples:
        >>> s = EpochBatchSampler(5, batch_size=2, world_size=1, rank=0, shuffle=False)
        >>> list(s)
        [[0, 1], [2, 3], [4]]
        >>> [list(EpochBatchSampler(5, 1, world_size=2, rank=r, shuffle=False)) for r in (0, 1)]
        [[[0], [2], [4]], [[1], [3], [-5]]]
    """

    def __init__(self, n_samples, batch_size: int, world_size: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 42):
        # `n_samples`: a count (samples 0..n-1 every epoch) or an `EpochPlan` (the samples
        # of each epoch: a held-out split removed, corpora mixed by weight).
        self.plan = None if isinstance(n_samples, (int, np.integer)) else n_samples
        if self.plan is not None:
            n_samples = self.plan.size
        if n_samples < 1:
            raise ValueError("no samples to train on")
        self.n, self.batch_size, self.world_size, self.rank = n_samples, batch_size, world_size, rank
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, step: int) -> None:
        self._resume = (int(epoch), int(step))

    def positions(self, epoch: int, step: int) -> np.ndarray:
        """The dataset ids of micro-step `step` of `epoch`, all ranks' (the global batch)."""
        q = np.arange(step * self.global_batch, min((step + 1) * self.global_batch, self.n), dtype=np.int64)
        if self.shuffle:
            q = permutation(self.n, (self.seed, epoch))(q)
        return q if self.plan is None else self.plan.ids_at(epoch, q)

    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of `epoch`, the same on every rank (O(n): for tools and
        tests; training asks `positions` one step at a time)."""
        return np.concatenate([self.positions(epoch, step) for step in range(len(self))])

    def rank_batch(self, chunk: np.ndarray) -> list[int]:
        mine = chunk[self.rank::self.world_size]
        if len(mine) == 0:
            return [~int(chunk[0])]
        return mine.tolist()

    def __iter__(self):
        epoch, start = self.epoch, 0
        if self._resume and self._resume[0] == epoch:
            start = self._resume[1]
            self._resume = None
            yield from itertools.repeat(None, start)
        for step in range(start, len(self)):
            yield self.rank_batch(self.positions(epoch, step))

    def state(self, epoch: int, step: int) -> dict:
        """What a checkpoint stores to resume the data exactly."""
        return {"epoch": epoch, "step": step, "samples_seen_in_epoch": min(step * self.global_batch, self.n),
                "n_samples": self.n, "batch_size": self.batch_size, "world_size": self.world_size,
                "shuffle": self.shuffle, "seed": self.seed, "order": ORDER_VERSION,
                "plan": self.plan.identity() if self.plan is not None else None}

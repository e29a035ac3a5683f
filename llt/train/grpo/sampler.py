"""GRPO's prompt order: llt's seeded, rank-sharded sample order over the prompts
(`llt.data.sampler.EpochBatchSampler`, one batch = one rank's prompts of a generation
batch), each batch yielded once per micro-step that trains on its completions
(`gradient_accumulation_steps x num_iterations`), as TRL's RepeatSampler does. The trainer
generates on the first and slices the rest from its buffer. An epoch's last batch, when the
prompts left do not fill one on every rank, is dropped (as TRL drops it): a generation
batch is whole groups on every rank, or none.

The position a checkpoint records is in micro-steps, so a resumed run draws the same prompts
in the same order, including part-way through a generation batch's iterations.
"""

from __future__ import annotations

import itertools

from llt.data.sampler import EpochBatchSampler


class RepeatedBatches:
    """Yields each of `base`'s batches `repeat` times (see the module docstring).

    Examples:
        >>> s = RepeatedBatches(EpochBatchSampler(4, 2, shuffle=False), repeat=2)
        >>> list(s), len(s)
        ([[0, 1], [0, 1], [2, 3], [2, 3]], 4)
        >>> list(RepeatedBatches(EpochBatchSampler(5, 2, shuffle=False), repeat=1))  # prompt 4 is left out
        [[0, 1], [2, 3]]
        >>> s.resume_at(0, 3); list(s)
        [None, None, None, [2, 3]]
    """

    def __init__(self, base: EpochBatchSampler, repeat: int, identity: dict | None = None):
        self.base, self.repeat, self.identity = base, repeat, identity or {}  # (G, μ): checked on resume
        self._resume: tuple[int, int] | None = None

    @property
    def epoch(self) -> int:
        return self.base.epoch

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    @property
    def batches(self) -> int:
        """Whole generation batches per epoch."""
        return self.base.n // self.base.global_batch

    def __len__(self) -> int:
        return self.batches * self.repeat

    def resume_at(self, epoch: int, step: int) -> None:
        self._resume = (int(epoch), int(step))

    def __iter__(self):
        epoch, start = self.base.epoch, 0
        if self._resume and self._resume[0] == epoch:
            start = self._resume[1]
            self._resume = None
            yield from itertools.repeat(None, start)
        for step in range(start, len(self)):
            yield self.base.rank_batch(self.base.positions(epoch, step // self.repeat))

    def state(self, epoch: int, step: int) -> dict:
        """The base sampler's state at generation batch step // repeat, the position in micro-steps."""
        out = self.base.state(epoch, step // self.repeat)
        out.update(step=step, micro_steps_per_generation=self.repeat, grpo=self.identity)
        return out

"""The held-out samples: `--eval_split` carved out of each corpus, plus `--eval_data_path`.

`--eval_split` holds out the same fraction of each corpus (or a number of samples shared
in proportion) with a fixed seed, independent of `--seed`: runs that differ in seed or
hyperparameters are evaluated on the same samples, and those samples are never trained on.
"""

from __future__ import annotations

import numpy as np

from llt.data.corpora import CHUNK, SamplePool
from llt.data.permutation import Permutation
from llt.errors import DataError

EVAL_SEED = 20260  # the held-out split's seed: fixed so every run holds out the same samples


def eval_split_sizes(counts: list[int], split: float) -> list[int]:
    """Held-out samples per corpus: `split` < 1 is a fraction of each corpus, >= 1 a total
    number of samples shared in proportion to the corpora's sizes (at least one each).

    Examples:
        >>> eval_split_sizes([100, 300], 0.1)
        [10, 30]
        >>> eval_split_sizes([100, 300], 8)
        [2, 6]
    """
    if split <= 0:
        return [0] * len(counts)
    total = sum(counts)
    if split < 1:
        sizes = [max(1, round(n * split)) for n in counts]
    else:
        sizes = [max(1, round(split * n / total)) for n in counts]
    for n, k in zip(counts, sizes):
        if k >= n:
            raise DataError(f"--eval_split {split}: would hold out {k} of a corpus's {n} samples, "
                            "leaving nothing to train on; use a smaller split")
    return sizes


def split_eval(dataset, split: float) -> list[SamplePool]:
    """The training pool of each corpus of `dataset`, its held-out samples being the first
    k values of a fixed permutation of the corpus (no array of them is built)."""
    counts = [int(dataset.corpus_offsets[c + 1] - dataset.corpus_offsets[c]) for c in range(dataset.n_corpora)]
    return [SamplePool(int(dataset.corpus_offsets[c]), n, k, Permutation(n, [EVAL_SEED, c]))
            for c, (n, k) in enumerate(zip(counts, eval_split_sizes(counts, split)))]


def held_tokens(dataset, pool: SamplePool) -> int:
    """Tokens in a pool's held-out samples, read in blocks from the memory-mapped offsets."""
    return sum(int(dataset.sample_lengths(pool.held_ids(np.arange(lo, min(lo + CHUNK, pool.held)))).sum())
               for lo in range(0, pool.held, CHUNK))


class EvalView:
    """Held-out samples from one or more datasets as one indexable set, each sample's
    `corpus` renumbered to its eval group (`names`). Negative indices are fillers, as in
    `ShardDataset`. A source is (dataset, count, ids, groups): `ids(j)` maps the source's
    j-th sample to a dataset id, so no list of held-out ids is kept."""

    def __init__(self, sources: list[tuple], names: list[str]):
        self.sources = [s for s in sources if s[1]]
        self.names = names
        self.offsets = np.concatenate([[0], np.cumsum([s[1] for s in self.sources])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def datasets(self) -> list:
        """The datasets the held-out samples come from."""
        return [s[0] for s in self.sources]

    def __getitem__(self, i: int) -> dict:
        filler = i < 0
        j = ~i if filler else i
        s = int(np.searchsorted(self.offsets, j, side="right")) - 1
        ds, _, ids, groups = self.sources[s]
        k = int(ids(np.array([j - self.offsets[s]]))[0])
        sample = ds[~k if filler else k]
        sample["corpus"] = groups[sample["corpus"]]
        sample["index"] = j  # its place in the eval set (precomputed reference log-probs)
        return sample


def build_eval_set(train, pools: list[SamplePool], eval_data=None) -> EvalView | None:
    """The eval samples: the held-out split of `train` (groups named like its corpora) and
    every sample of `eval_data` (another dataset, from --eval_data_path)."""
    names = [train.names[c] for c, pool in enumerate(pools) if pool.held]
    sources = []
    if names:
        groups = [names.index(n) if n in names else 0 for n in train.names]
        sources += [(train, pool.held, pool.held_ids, groups) for pool in pools if pool.held]
    if eval_data is not None:
        overlap = set(map(str, train.paths)) & set(map(str, eval_data.paths))
        if overlap:
            raise DataError(f"--eval_data_path: {sorted(overlap)[0]} is also under --data_path; "
                            "held-out data must not be trained on (use --eval_split to carve it)")
        groups = []
        for n in eval_data.names:
            name = n if n not in names else f"{n}.eval"
            names.append(name)
            groups.append(len(names) - 1)
        sources.append((eval_data, len(eval_data), lambda j: np.asarray(j, dtype=np.int64), groups))
    return EvalView(sources, names) if sources else None

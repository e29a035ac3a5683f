"""Several corpora in one run: names, token weights, and each epoch's samples.

    --data_path math=out/metamath:0.3 chat=out/sharegpt:0.7

Each `--data_path` entry is `[name=]path[:weight]`. Without weights every sample of every
corpus is trained once per epoch (the corpora's natural mix). With weights, which must
then be given for every corpus, a mixture epoch holds as many tokens as all corpora
together, and corpus c gets `weight_c / sum(weights)` of them: a corpus is down-sampled
(a different subset each epoch) or up-sampled (whole passes plus a subset). Weights
count tokens, not samples, so a corpus of long samples is not over-represented.

Every choice comes from `(seed, corpus, pass)`: the samples of epoch e are the same on
every rank and on every run with the same flags, so a resume continues them exactly.
Each corpus is read as an endless stream of shuffled passes over its samples, and epoch
e takes stream positions [e*n_c, (e+1)*n_c): no sample is repeated within a corpus until
all its samples have been used. Nothing here lists the samples: positions map to ids on
demand (`EpochPlan.ids_at`), so memory grows with the number of corpora and held-out
samples, not with the corpus (200M samples cost no more RAM than 1,000).

The held-out split (`llt.data.heldout`) is taken out of each corpus before any of this.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llt.data.dataset import corpus_name
from llt.data.permutation import Permutation
from llt.errors import DataError

CHUNK = 1 << 16  # samples per step in O(samples) passes: a few MB of temporaries
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class CorpusSpec:
    """One `--data_path` entry."""

    name: str
    path: str
    weight: float | None = None


def parse_corpora(values, flag: str = "--data_path") -> list[CorpusSpec]:
    """`[name=]path[:weight]` entries (or a YAML mapping name -> "path[:weight]" or
    {path, weight}) as specs.

    Examples:
        >>> parse_corpora(["math=out/metamath:0.3", "out/chat:0.7"])
        [CorpusSpec(name='math', path='out/metamath', weight=0.3), CorpusSpec(name='chat', path='out/chat', weight=0.7)]
        >>> parse_corpora(["out/a", "out/b"])[1]
        CorpusSpec(name='b', path='out/b', weight=None)
    """
    if isinstance(values, (str, Path)):
        values = [values]
    if isinstance(values, dict):
        values = [f"{k}={v}" if not isinstance(v, dict) else v | {"name": k} for k, v in values.items()]
    specs = []
    for v in values:
        if isinstance(v, dict):
            unknown = set(v) - {"name", "path", "weight"}
            if unknown or "path" not in v:
                raise DataError(f"{flag}: {v!r}: a corpus mapping takes path and weight")
            name, path, weight = v.get("name"), str(v["path"]), v.get("weight")
        else:
            name, path, weight = _split_entry(str(v), flag)
        name = name or corpus_name(path)
        if not _NAME.match(name):
            raise DataError(f"{flag} {v}: corpus name {name!r} may hold only letters, digits, '_', '.', '-'"
                            " (it names log keys); give one with name=path")
        if weight is not None:
            weight = float(weight)
            if not (weight > 0 and math.isfinite(weight)):
                raise DataError(f"{flag} {v}: weight {weight} must be a positive number")
        specs.append(CorpusSpec(name, path, weight))
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{flag}: corpus name(s) {', '.join(dup)} used twice; name them with name=path")
    weighted = [s.weight is not None for s in specs]
    if any(weighted) and not all(weighted):
        missing = [s.name for s in specs if s.weight is None]
        raise DataError(f"{flag}: corpus {', '.join(missing)} has no weight; give every corpus a "
                        "weight (name=path:weight) or none")
    return specs


def _split_entry(v: str, flag: str) -> tuple[str | None, str, float | None]:
    name = None
    m = re.match(r"^([A-Za-z0-9_.\-]+)=(.+)$", v)
    if m:
        name, v = m.group(1), m.group(2)
    weight = None
    head, sep, tail = v.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            if not Path(v).exists():
                raise DataError(f"{flag} {v}: {tail!r} after ':' is not a weight") from None
        else:
            v = head
    return name, v, weight


class SamplePool:
    """The training samples of one corpus, addressed by rank `m` without listing them: the
    corpus is dataset ids `[offset, offset + n)`, of which the first `held` values of the
    fixed permutation `perm` are held out (`llt.data.heldout`).

    `ids(m)` is sample `perm(held + m)`, O(1) each; `ids(m, ordered=True)` is the m-th
    training sample in id order (for unshuffled runs), found through the count of held-out
    samples per block of `BLOCK` ids (n / 4096 counts, built on first use) and one block's
    membership test. Either way a pool holds no per-sample array.

    Examples:
        >>> pool = SamplePool(100, 10, held=2, perm=Permutation(10, [7]))
        >>> held, train = pool.held_ids(np.arange(2)), pool.ids(np.arange(8), ordered=True)
        >>> sorted(held.tolist() + train.tolist()) == list(range(100, 110)), bool(np.all(np.diff(train) > 0))
        (True, True)
        >>> sorted(pool.ids(np.arange(8)).tolist()) == train.tolist()
        True
    """

    BLOCK = 4096

    def __init__(self, offset: int, n: int, held: int = 0, perm: Permutation | None = None):
        if held and perm is None:
            raise ValueError("a held-out split needs its permutation")
        self.offset, self.n, self.held, self.perm = int(offset), int(n), int(held), perm
        self.size = self.n - self.held
        self._kept_before: np.ndarray | None = None  # training samples before each block

    def held_ids(self, j: np.ndarray) -> np.ndarray:
        """The dataset ids of held-out samples `j` (in `[0, held)`)."""
        return self.offset + self.perm(j)

    def ids(self, m: np.ndarray, ordered: bool = False) -> np.ndarray:
        m = np.asarray(m, dtype=np.int64)
        if not self.held:
            return self.offset + m
        if not ordered:
            return self.offset + self.perm(self.held + m)
        kept = self._kept()
        block = np.searchsorted(kept, m, side="right") - 1
        out = np.empty_like(m)
        for b in np.unique(block):
            sel = block == b
            ids = np.arange(b * self.BLOCK, min((b + 1) * self.BLOCK, self.n), dtype=np.int64)
            ids = ids[self.perm.inverse(ids) >= self.held]
            out[sel] = ids[m[sel] - kept[b]]
        return self.offset + out

    def _kept(self) -> np.ndarray:
        if self._kept_before is None:
            blocks = -(-self.n // self.BLOCK)
            held = np.zeros(blocks, dtype=np.int64)
            for lo in range(0, self.held, CHUNK):
                ids = self.perm(np.arange(lo, min(lo + CHUNK, self.held)))
                held += np.bincount(ids // self.BLOCK, minlength=blocks)
            sizes = np.minimum(self.BLOCK, self.n - np.arange(blocks) * self.BLOCK)
            self._kept_before = np.concatenate([[0], np.cumsum(sizes - held)]).astype(np.int64)
        return self._kept_before


@functools.lru_cache(maxsize=64)
def permutation(n: int, key: tuple) -> Permutation:
    """The `Permutation` for (n, key), built once: a resumed or long epoch asks for it per batch."""
    return Permutation(n, list(key))


class EpochPlan:
    """The dataset ids each epoch trains on, before the sampler shuffles them: position q of
    epoch e maps to an id by `ids_at(e, q)`, in O(len(q)) time and memory.

    Without weights, an epoch is every pool's samples, corpus after corpus. With weights,
    corpus c fills `counts[c]` positions from its endless stream of shuffled passes.

    Examples:
        >>> plan = EpochPlan([SamplePool(0, 10), SamplePool(10, 4)], [50, 20])
        >>> plan.size, sorted(plan.ids(0).tolist()) == list(range(14))
        (14, True)
        >>> up = EpochPlan([SamplePool(0, 10), SamplePool(10, 4)], [50, 20], weights=[0.5, 0.5], seed=1)
        >>> up.counts                                  # 70 tokens: 35 from each
        [7, 7]
        >>> ids = up.ids(0); int((ids >= 10).sum())     # 4 small-corpus samples, 3 of them twice
        7
    """

    def __init__(self, pools: list[SamplePool], tokens: list[int], weights: list[float] | None = None,
                 seed: int = 42, shuffle: bool = True, names: list[str] | None = None):
        self.pools = pools
        self.names = names or [str(c) for c in range(len(pools))]
        self.seed, self.shuffle, self.weights = seed, shuffle, weights
        self.tokens = [int(t) for t in tokens]
        self.mean_len = [t / max(p.size, 1) for t, p in zip(self.tokens, pools)]
        for name, pool in zip(self.names, pools):
            if pool.size == 0:
                raise DataError(f"--data_path {name}: no samples left to train on")
        if weights is None:
            self.counts = [p.size for p in pools]
        else:
            total, wsum = sum(self.tokens), sum(weights)
            self.counts = [max(1, round(total * w / wsum / m)) for w, m in zip(weights, self.mean_len)]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.size = int(self.starts[-1])

    def ids_at(self, epoch: int, q: np.ndarray) -> np.ndarray:
        """The dataset ids at positions `q` (in `[0, size)`) of epoch `epoch`."""
        q = np.asarray(q, dtype=np.int64)
        corpus = np.searchsorted(self.starts, q, side="right") - 1
        out = np.empty_like(q)
        for c in np.unique(corpus):
            sel = corpus == c
            m = q[sel] - self.starts[c]
            if self.weights is not None:
                m = self._stream(int(c), epoch * self.counts[c] + m)
            out[sel] = self.pools[c].ids(m, ordered=not self.shuffle)
        return out

    def ids(self, epoch: int) -> np.ndarray:
        """Every id of epoch `epoch` in plan order (O(size): for tools and tests)."""
        return self.ids_at(epoch, np.arange(self.size))

    def _stream(self, c: int, s: np.ndarray) -> np.ndarray:
        """Positions `s` of corpus c's endless stream of passes, as ranks in its pool."""
        n = self.pools[c].size
        passes, m = s // n, s % n
        if self.shuffle:
            for p in np.unique(passes):
                sel = passes == p
                m[sel] = permutation(n, (self.seed, c, int(p)))(m[sel])
        return m

    def identity(self) -> dict:
        """What a checkpoint stores so that a resume uses the same plan."""
        return {"names": self.names, "weights": self.weights, "counts": self.counts}

    def describe(self) -> list[dict]:
        """Per corpus: samples available, samples and expected tokens per epoch, and share."""
        expected = [n * m for n, m in zip(self.counts, self.mean_len)]
        total = sum(expected)
        return [{"name": name, "samples": i, "tokens": t, "weight": w,
                 "samples_per_epoch": n, "tokens_per_epoch": round(e), "share": round(e / total, 4),
                 "passes_per_epoch": round(n / i, 3)}
                for name, i, t, n, e, w in zip(self.names, [p.size for p in self.pools], self.tokens, self.counts, expected,
                                               self.weights or [None] * len(self.names))]

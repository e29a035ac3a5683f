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
all its samples have been used.

The held-out split (`llt.data.heldout`) is taken out of each corpus before any of this.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llt.data.dataset import corpus_name
from llt.errors import DataError

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


class EpochPlan:
    """The dataset indices each epoch trains on (before the sampler shuffles them).

    Examples:
        >>> plan = EpochPlan([np.arange(10), np.arange(10, 14)], [np.full(10, 5), np.full(4, 5)])
        >>> plan.size, sorted(plan.ids(0).tolist()) == list(range(14))
        (14, True)
        >>> up = EpochPlan([np.arange(10), np.arange(10, 14)], [np.full(10, 5), np.full(4, 5)],
        ...                weights=[0.5, 0.5], seed=1)
        >>> up.counts                                  # 70 tokens: 35 from each
        [7, 7]
        >>> ids = up.ids(0); int((ids >= 10).sum())     # 4 small-corpus samples, 3 of them twice
        7
    """

    def __init__(self, ids: list[np.ndarray], lengths: list[np.ndarray], weights: list[float] | None = None,
                 seed: int = 42, shuffle: bool = True, names: list[str] | None = None):
        self.corpus_ids = [np.asarray(i, dtype=np.int64) for i in ids]
        self.names = names or [str(c) for c in range(len(ids))]
        self.seed, self.shuffle, self.weights = seed, shuffle, weights
        self.tokens = [int(np.asarray(n).sum()) for n in lengths]
        self.mean_len = [t / max(len(i), 1) for t, i in zip(self.tokens, self.corpus_ids)]
        for name, i in zip(self.names, self.corpus_ids):
            if len(i) == 0:
                raise DataError(f"--data_path {name}: no samples left to train on")
        if weights is None:
            self.counts = [len(i) for i in self.corpus_ids]
        else:
            total, wsum = sum(self.tokens), sum(weights)
            self.counts = [max(1, round(total * w / wsum / m)) for w, m in zip(weights, self.mean_len)]
        self.size = sum(self.counts)

    def ids(self, epoch: int) -> np.ndarray:
        if self.weights is None:
            return np.concatenate(self.corpus_ids)
        return np.concatenate([self._stream(c, epoch * n, (epoch + 1) * n) for c, n in enumerate(self.counts)])

    def _stream(self, c: int, lo: int, hi: int) -> np.ndarray:
        """Positions [lo, hi) of corpus c's endless stream of shuffled passes."""
        ids, n = self.corpus_ids[c], len(self.corpus_ids[c])
        out = []
        for p in range(lo // n, (hi - 1) // n + 1):
            order = np.random.default_rng([self.seed, c, p]).permutation(n) if self.shuffle else np.arange(n)
            a, b = max(lo - p * n, 0), min(hi - p * n, n)
            out.append(ids[order[a:b]])
        return np.concatenate(out)

    def identity(self) -> dict:
        """What a checkpoint stores so that a resume uses the same plan."""
        return {"names": self.names, "weights": self.weights, "counts": self.counts}

    def describe(self) -> list[dict]:
        """Per corpus: samples available, samples and expected tokens per epoch, and share."""
        expected = [n * m for n, m in zip(self.counts, self.mean_len)]
        total = sum(expected)
        return [{"name": name, "samples": len(i), "tokens": t, "weight": w,
                 "samples_per_epoch": n, "tokens_per_epoch": round(e), "share": round(e / total, 4),
                 "passes_per_epoch": round(n / len(i), 3)}
                for name, i, t, n, e, w in zip(self.names, self.corpus_ids, self.tokens, self.counts, expected,
                                               self.weights or [None] * len(self.names))]

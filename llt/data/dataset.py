"""The torch `Dataset` over encoded shards: every `.idx`/`.bin` pair under `--data_path`.

Samples are read through memory maps opened lazily in each DataLoader worker (a
`ShardReader` pickles without its map), so start-up costs one header read per shard and
a sample costs two index lookups and one zero-copy slice, whatever the corpus size.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import torch

from llt.shards.reader import ShardReader
from llt.errors import DataError
from llt.shards.manifest import find_shards

IGNORE_INDEX = -100  # the label transformers' losses skip


class ShardDataset(torch.utils.data.Dataset):
    """Samples as `{"input_ids", "labels", "doc_starts"}` int64 numpy arrays, plus
    `corpus`, the index of the `data_path` entry the sample comes from.

    `data_path` is one corpus (a folder, or one shard) or a list of them; each entry is a
    corpus of its own, named by `names` (default: the folder's name), and its shards come
    in path order after the previous entry's.

    `labels` are the ids where the stored loss mask trains them and -100 elsewhere, and
    also -100 at the first token of every packed document: nothing inside a document
    predicts it, and once samples are laid end to end (padding-free batches) the previous
    document's last token must not learn to predict it either.

    A negative index `~i` returns sample i with every label -100: the sampler uses it to
    give each rank the same number of steps at the end of an epoch without training on
    any sample twice.

    Examples:
        >>> ds = ShardDataset("out/qa")            # doctest: +SKIP
        >>> ds[0]["labels"][:6]                    # doctest: +SKIP
        array([-100, -100, -100, -100,  412,   29])
    """

    # KTO with precomputed reference log-probs: each sample also carries the next sample
    # (`partner`), whose completions are its fixed mismatched ones (llt.train.kto.collate)
    partner = False

    def __init__(self, data_path: str | Path | list, names: list[str] | None = None):
        corpora = list(data_path) if isinstance(data_path, (list, tuple)) else [data_path]
        self.names = list(names) if names else [corpus_name(p) for p in corpora]
        if len(self.names) != len(corpora):
            raise ValueError("one name per corpus")
        self.paths: list[Path] = []
        shard_corpus: list[int] = []
        owner: dict[Path, str] = {}
        for c, corpus in enumerate(corpora):
            for p in find_shards(corpus):
                if p in owner:
                    raise DataError(f"--data_path: {p} is in both {owner[p]} and {corpus}; "
                                    "give each corpus its own folder")
                owner[p] = str(corpus)
                self.paths.append(p)
                shard_corpus.append(c)
        self.readers = [ShardReader(p) for p in self.paths]
        counts = [len(r) for r in self.readers]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.shard_corpus = np.asarray(shard_corpus, dtype=np.int64)
        # Shards are in corpus order, so corpus c holds samples [corpus_offsets[c], corpus_offsets[c+1]).
        ends = [int(self.offsets[np.flatnonzero(self.shard_corpus == c)[-1] + 1]) for c in range(len(corpora))]
        self.corpus_offsets = np.array([0] + ends, dtype=np.int64)
        self.headers = [r.header for r in self.readers]
        prints = {h.get("tokenizer_fingerprint") for h in self.headers}
        if len(prints) > 1:
            by = {}
            for p, h in zip(self.paths, self.headers):
                by.setdefault(h.get("tokenizer_fingerprint"), p)
            a, b = list(by.values())[:2]
            raise DataError(f"--data_path: {a} and {b} were encoded with different tokenizers; "
                            "train on shards from one tokenizer")
        if len(self) == 0:
            raise DataError(f"--data_path {data_path}: the shards hold no samples")

    @property
    def n_corpora(self) -> int:
        return len(self.names)

    @property
    def fingerprint(self) -> str | None:
        return self.headers[0].get("tokenizer_fingerprint")

    @property
    def vocab_size(self) -> int:
        return max(h["vocab_size"] for h in self.headers)

    @property
    def packed(self) -> bool:
        """Whether any sample holds more than one document."""
        return any(h.get("n_docs", h["n_samples"]) > h["n_samples"] for h in self.headers)

    @property
    def n_tokens(self) -> int:
        return sum(h["n_tokens"] for h in self.headers)

    def corpus_tokens(self, c: int) -> int:
        """Tokens in corpus `c`, from its shards' headers."""
        return sum(h["n_tokens"] for h, k in zip(self.headers, self.shard_corpus) if k == c)

    def sample_lengths(self, ids) -> np.ndarray:
        """The lengths in tokens of samples `ids`, read from the memory-mapped offsets (no
        array of every sample's length is ever built)."""
        ids = np.asarray(ids, dtype=np.int64)
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        out = np.empty(len(ids), dtype=np.int64)
        for s in np.unique(shard):
            sel = shard == s
            j = ids[sel] - self.offsets[s]
            offsets = self.readers[s].sample_offsets
            out[sel] = offsets[j + 1].astype(np.int64) - offsets[j].astype(np.int64)
        return out

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int) -> tuple[int, ShardReader, int]:
        s = bisect.bisect_right(self.offsets, i) - 1
        return s, self.readers[s], i - int(self.offsets[s])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        out = self._sample(i)
        if self.partner:
            j = out["index"]
            nxt = self._sample((j + 1) % len(self)) if len(self) > 1 else out
            out["partner"] = {k: nxt[k] for k in ("input_ids", "labels", "doc_starts")}
        return out

    def _sample(self, i: int) -> dict[str, np.ndarray]:
        filler = i < 0
        if filler:
            i = ~i
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        s, reader, j = self._locate(i)
        ids = reader.tokens(j).astype(np.int64)
        starts = reader.doc_starts(j)
        if filler:
            labels = np.full_like(ids, IGNORE_INDEX)
        else:
            labels = ids.copy()
            for lo, hi in _gaps(reader.loss_spans(j), len(ids)):
                labels[lo:hi] = IGNORE_INDEX
            labels[starts] = IGNORE_INDEX
        out = {"input_ids": ids, "labels": labels, "doc_starts": starts,
               "corpus": int(self.shard_corpus[s]), "filler": filler, "index": i}
        for name in reader.doc_array_names:  # KTO labels, pair margins: one value per document
            out[name] = reader.doc_values(name, j)
        return out


def corpus_name(path) -> str:
    """A corpus's default name: its folder's (or shard's) name."""
    p = Path(path)
    return p.stem if p.suffix in (".idx", ".bin") else (p.name or str(p))


def _gaps(spans: np.ndarray, length: int):
    """The (start, end) ranges not covered by sorted `spans`."""
    pos = 0
    for lo, hi in spans:
        if lo > pos:
            yield pos, int(lo)
        pos = max(pos, int(hi))
    if pos < length:
        yield pos, length

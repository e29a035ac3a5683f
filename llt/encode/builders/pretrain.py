"""`--encode_type pretrain`: documents joined into one stream and cut every `max_length`.

Every document becomes `prefix + ids + [eos]`; the stream is cut into `max_length`
samples (the seed's behaviour), and the start of every document inside a sample is
recorded so the trainer keeps documents apart. The tail that does not fill a sample is
carried to the next batch, and written, shorter, at the end.
"""

from __future__ import annotations

import numpy as np

from llt.encode.builders.base import Builder, Where
from llt.encode.sample import wrap_pieces
from llt.shards.writer import SampleBatch


def _union(a, b) -> np.ndarray:
    """Sorted distinct values of both (np.union1d imports numpy.ma: 20 ms in each worker)."""
    x = np.sort(np.concatenate([np.asarray(a, np.int64), np.asarray(b, np.int64)]))
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) else x


class PretrainBuilder(Builder):
    has_loss_mask = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._carry = np.zeros(0, np.uint32)  # tokens not yet filling a sample
        self._carry_docs = np.zeros(0, np.int64)

    def finish(self) -> SampleBatch | None:
        """The last, shorter pretrain sample left in the carry, if any."""
        if not len(self._carry):
            return None
        bounds = _union(self._carry_docs, [0])
        batch = SampleBatch(self._carry, np.array([len(self._carry)], np.int64),
                            np.array([len(bounds)], np.int64), bounds)
        self._carry = np.zeros(0, np.uint32)
        self._carry_docs = np.zeros(0, np.int64)
        return self._count(batch)

    def samples(self, records: list, where: Where) -> SampleBatch | None:
        texts, positions = [], []
        name = self.names.text
        for k, rec in enumerate(records):
            text = rec if isinstance(rec, str) else self._field(rec, name, where, k, str)
            if not text:
                self._skip(where, k, "empty text")
                continue
            texts.append(text)
            positions.append(k)
        if not texts:
            return None
        ids, lens = self._flat_ids(self._encode_fast(texts, where, positions))
        docs, doc_lens = wrap_pieces(ids, lens, self.info.prefix_ids, [self.info.eos_id])
        starts = np.zeros(len(doc_lens), np.int64)
        np.cumsum(doc_lens[:-1], out=starts[1:])
        stream = np.concatenate([self._carry, docs])
        doc_starts = np.concatenate([self._carry_docs, starts + len(self._carry)])
        L = self.max_length
        n_full = len(stream) // L
        cut = n_full * L
        self._carry = stream[cut:].copy()
        self._carry_docs = doc_starts[doc_starts >= cut] - cut
        if n_full == 0:
            return None
        # Every sample starts a segment at 0, even mid-document: positions restart there.
        bounds = _union(doc_starts[doc_starts < cut], np.arange(0, cut, L))
        batch = SampleBatch(stream[:cut], np.full(n_full, L, np.int64),
                            np.bincount(bounds // L, minlength=n_full).astype(np.int64), bounds % L)
        return self._count(batch)

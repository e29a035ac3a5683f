"""`--encode_type qa` (plain, the seed's format): `prefix + ids(q) + ids(a) + [eos]`, loss on
the answer ids and the EOS. `q` and `a` are tokenized separately, exactly as the seed did.
(`--qa_template chat` renders the pair as a conversation instead: `builders.chat`.)"""

from __future__ import annotations

import numpy as np

from llt.encode.builders.base import Builder, Where
from llt.encode.sample import wrap_pieces
from llt.shards.writer import SampleBatch


class QABuilder(Builder):
    def samples(self, records: list, where: Where) -> SampleBatch | None:
        texts, positions = [], []
        for k, rec in enumerate(records):
            q = self._field(rec, self.names.q, where, k, str)
            a = self._field(rec, self.names.a, where, k, str)
            if not a:
                self._skip(where, k, f"empty answer field {self.names.a!r}")
                continue
            texts += (q, a)
            positions += (k, k)
        if not texts:
            return None
        ids, lens = self._flat_ids(self._encode_fast(texts, where, positions))
        q_lens, a_lens = lens[0::2], lens[1::2]
        tokens, full = wrap_pieces(ids, q_lens + a_lens, self.info.prefix_ids, [self.info.eos_id])
        start = len(self.info.prefix_ids) + q_lens
        batch = SampleBatch(tokens, full, np.ones(len(full), np.int64), np.zeros(len(full), np.int64),
                            np.ones(len(full), np.int64), np.stack([start, full], axis=1))
        return self._limit(batch)

"""What every encode type's builder shares: the counts it keeps, the fields it reads, the
interface (`Builder`: records in, a `SampleBatch` out), tokenizing in one batched call with
the record named when it fails, and `--overlong`."""

from __future__ import annotations

import array
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from llt.encode.chat.messages import RecordError
from llt.encode.sample import Sample, join_samples, split_batch
from llt.encode.tokenizer_info import TokenizerInfo
from llt.shards.writer import SampleBatch

Where = Callable[[int], str]  # record position in the batch -> "file: line 12" for errors


@dataclass
class EncodeStats:
    """Counts a worker keeps and the encoder sums for its closing summary."""

    records: int = 0
    skipped_empty: int = 0  # empty text / empty answer / no assistant turn
    dropped_overlong: int = 0
    # of those, with --overlong truncate: no trained token within the first max_length
    # (a chat whose assistant turns all start past the cut), so nothing would be learnt
    dropped_nothing_trained: int = 0
    truncated: int = 0
    # chat: conversations skipped with --unrendered skip (the template dropped a part)
    skipped_unrendered: int = 0
    # chat: samples that repeat a conversation's history because the template renders it
    # differently once later turns follow, and the history tokens they repeat
    turn_samples: int = 0
    extra_prompt_tokens: int = 0
    samples_before_packing: int = 0
    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    packed_capacity: int = 0  # bins * max_length, for the packing efficiency

    def add(self, other: "EncodeStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Fields:
    """Names of the fields read from dict records."""

    text: str = "text"
    q: str = "q"
    a: str = "a"
    messages: str = "messages"
    tools: str = "tools"
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    completion: str = "completion"
    label: str = "label"
    margin: str | None = None  # preference: the per-pair margin field, when the corpus has one


_U32 = next(c for c in "IL" if array.array(c).itemsize == 4)  # array's 32-bit unsigned type




class Builder:
    """Records in, `SampleBatch`es out, for one encode type; one lives in each encoder worker.

    `encode(records, where)` checks a list of raw records, tokenizes them in one batched
    call and returns their samples (or None); `finish()` returns what is held back at the
    end (pretrain's last, shorter sample). `has_loss_mask`: whether samples carry loss spans.
    """

    has_loss_mask = True

    def __init__(self, tok, info: TokenizerInfo, max_length: int, overlong: str = "drop", strict: bool = False,
                 names: Fields | None = None):
        self.tok, self.info = tok, info
        self.backend = tok.backend_tokenizer
        self.max_length, self.overlong, self.strict = max_length, overlong, strict
        self.names = names or Fields()
        self.stats = EncodeStats()

    def encode(self, records: list, where: Where) -> SampleBatch | None:
        """Encode a list of records; `where(k)` describes record k for error messages."""
        self.stats.records += len(records)
        return self.samples(records, where)

    def samples(self, records: list, where: Where) -> SampleBatch | None:
        raise NotImplementedError

    def finish(self) -> SampleBatch | None:
        return None

    # ------------------------------------------------------------------ records
    def _field(self, rec, name: str, where: Where, k: int, kind: type):
        if not isinstance(rec, dict):
            raise RecordError(f"{where(k)}: expected an object with field {name!r}, "
                              f"got {type(rec).__name__}")
        if name not in rec:
            raise RecordError(f"{where(k)}: missing field {name!r} (fields: "
                              f"{', '.join(map(repr, rec)) or 'none'})")
        value = rec[name]
        if not isinstance(value, kind):
            raise RecordError(f"{where(k)}: field {name!r} is {type(value).__name__}, "
                              f"expected {kind.__name__}")
        return value

    def _skip(self, where: Where, k: int, why: str) -> None:
        if self.strict:
            raise RecordError(f"{where(k)}: {why} (--strict makes this an error)")
        self.stats.skipped_empty += 1

    # ------------------------------------------------------------------ tokenizing
    def _encode_fast(self, texts: list[str], where: Where, positions: list[int]):
        try:
            return self.backend.encode_batch_fast(texts, add_special_tokens=False)
        except Exception as e:  # noqa: BLE001 - find and name the record that broke it
            self._blame(texts, where, positions, e)

    def _blame(self, texts, where, positions, error):
        for text, pos in zip(texts, positions):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON allows "\ud800"; UTF-8 and tokenizers do not
                raise RecordError(f"{where(pos)}: a lone surrogate or invalid unicode at "
                                  f"character {e.start} ({text[max(0, e.start - 20):e.start]!r}...)") from None
            try:
                self.backend.encode(text, add_special_tokens=False)
            except Exception as e:  # noqa: BLE001
                raise RecordError(f"{where(pos)}: untokenizable text: {type(e).__name__}: {e}") from None
        raise error

    @staticmethod
    def _flat_ids(encs) -> tuple[np.ndarray, np.ndarray]:
        lens = np.fromiter(map(len, encs), np.int64, len(encs))
        out = array.array(_U32)
        extend = out.extend  # from each Encoding's list: 15% faster than np.fromiter over them all
        for e in encs:
            extend(e.ids)
        return np.frombuffer(out, np.uint32) if len(out) else np.zeros(0, np.uint32), lens

    # ------------------------------------------------------------------ limits
    def _limit(self, batch: SampleBatch) -> SampleBatch | None:
        """Apply `--overlong` to samples longer than max_length, then count the rest."""
        over = batch.lengths > self.max_length
        if over.any():
            samples = split_batch(batch)
            kept = []
            for s, too_long in zip(samples, over):
                if not too_long:
                    kept.append(s)
                elif self.overlong == "truncate":
                    L = self.max_length
                    spans = np.minimum(s.spans[s.spans[:, 0] < L], L)
                    if len(spans):
                        kept.append(Sample(s.tokens[:L], spans, s.docs[s.docs < L]))
                        self.stats.truncated += 1
                    else:
                        self.stats.dropped_overlong += 1
                        self.stats.dropped_nothing_trained += 1
                else:
                    self.stats.dropped_overlong += 1
            batch = join_samples(kept, True)
        return self._count(batch) if len(batch) else None

    def _count(self, batch: SampleBatch) -> SampleBatch:
        self.stats.samples_before_packing += len(batch)
        return batch

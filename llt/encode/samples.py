"""Turning user records into token samples with loss spans and document boundaries.

One `SampleBuilder` lives in each encoder worker. It takes a list of raw records, checks
them, tokenizes them in one batched call and returns a `SampleBatch` of flat arrays:

* `pretrain`: every document becomes `prefix + ids + [eos]`; documents are joined into
  one stream and cut into `max_length` samples (the seed's behaviour). The start of every
  document inside a sample is recorded, so the trainer can keep documents apart.
* `qa` (plain, seed-compatible): `prefix + ids(q) + ids(a) + [eos]`, loss on the answer
  ids and the EOS. `q` and `a` are tokenized separately, exactly as the seed did.
* `chat` (and `qa` with `--qa_template chat`): each assistant turn trained on exactly the
  text the model generates for it at inference, after the prompt it sees then, as the
  chat template renders both (`encode.chat`); one sample per conversation where the
  template renders it prefix by prefix, one per turn where it rewrites history.
"""

from __future__ import annotations

import array

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from llt.shards.writer import SampleBatch
from llt.encode.chat import ChatEncoder
from llt.encode.joins import Joiner, segment_lengths
from llt.encode.messages import Conversation, Message, RecordError, read_conversation
from llt.encode.preference import PairBuilder, limit_pair, pair_sample
from llt.encode.pieces import Sample, join_samples, mask_to_spans, split_batch, wrap_pieces
from llt.encode.tokenizer_info import TokenizerInfo

__all__ = ["EncodeStats", "Fields", "RecordError", "SampleBuilder", "Sample", "join_samples", "mask_to_spans",
           "split_batch", "wrap_pieces"]

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


_U32 = next(c for c in "IL" if array.array(c).itemsize == 4)  # array's 32-bit unsigned type


def _union(a, b) -> np.ndarray:
    """Sorted distinct values of both (np.union1d imports numpy.ma: 20 ms in each worker)."""
    x = np.sort(np.concatenate([np.asarray(a, np.int64), np.asarray(b, np.int64)]))
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) else x


_CHUNK_CHARS = 1 << 20  # characters tokenized per call in chat batches (bounds Encoding memory)


class SampleBuilder:
    """Records in, `SampleBatch`es out, for one encode type. Keeps the pretrain carry."""

    def __init__(self, tok, info: TokenizerInfo, encode_type: str, max_length: int,
                 overlong: str = "drop", qa_template: str = "plain", strict: bool = False,
                 names: Fields | None = None, chat: ChatEncoder | None = None):
        self.tok, self.info = tok, info
        self.backend = tok.backend_tokenizer
        self.encode_type, self.max_length = encode_type, max_length
        self.overlong, self.strict = overlong, strict
        self.use_chat = encode_type == "chat" or (encode_type == "qa" and qa_template == "chat")
        self.names = names or Fields()
        self.chat = chat
        self._joiner = Joiner(tok) if chat is not None else None
        self.pairs = PairBuilder(chat, (self.names.prompt, self.names.chosen, self.names.rejected),
                                 info.prefix_ids, info.eos_token, self.names.tools)
        if self.use_chat and chat is None:
            raise ValueError("chat encoding needs a ChatEncoder")
        self.has_loss_mask = encode_type != "pretrain"
        self.stats = EncodeStats()
        self._carry = np.zeros(0, np.uint32)  # pretrain tokens not yet filling a sample
        self._carry_docs = np.zeros(0, np.int64)

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

    def encode(self, records: list, where: Where) -> SampleBatch | None:
        """Encode a list of records; `where(k)` describes record k for error messages."""
        self.stats.records += len(records)
        if self.encode_type == "pretrain":
            return self._pretrain(records, where)
        if self.encode_type == "preference":
            return self._preference(records, where)
        if self.use_chat:
            return self._chat(records, where)
        return self._qa(records, where)

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

    # ------------------------------------------------------------------ pretrain
    def _pretrain(self, records: list, where: Where) -> SampleBatch | None:
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

    # ------------------------------------------------------------------ qa (plain)
    def _qa(self, records: list, where: Where) -> SampleBatch | None:
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

    # ------------------------------------------------------------------ chat
    def _conversation(self, rec, where: Where, k: int) -> Conversation:
        def say(why: str) -> RecordError:
            return RecordError(f"{where(k)}: {why}")

        if self.encode_type == "qa":
            q = self._field(rec, self.names.q, where, k, str)
            a = self._field(rec, self.names.a, where, k, str)
            return Conversation([Message("user", q), Message("assistant", a)], None)
        return read_conversation(rec, self.names.messages, self.names.tools, say)

    def _plain(self, rec) -> list | None:
        """A record of plain text messages and no tools, by its shape's plan (or None)."""
        msgs = rec if type(rec) is list else rec.get(self.names.messages) if type(rec) is dict else None
        if type(msgs) is not list or (type(rec) is dict and rec.get(self.names.tools) is not None):
            return None
        return self.chat.plain_samples(msgs)

    def _chat(self, records: list, where: Where) -> SampleBatch | None:
        layout = []  # (record position, ChatSample) per sample
        plain = self.encode_type == "chat"
        for k, rec in enumerate(records):
            if plain and (samples := self._plain(rec)) is not None:
                layout += [(k, s) for s in samples]
                continue
            conv = self._conversation(rec, where, k)
            if not any(m.role == "assistant" and (m.content or m.reasoning or m.tool_calls)
                       for m in conv.messages):
                self._skip(where, k, "no assistant turn with content")
                continue
            samples = self.chat.samples(conv, lambda why, k=k: RecordError(f"{where(k)}: {why}"))
            if samples is None:
                self.stats.skipped_unrendered += 1
                continue
            layout += [(k, s) for s in samples]
        if not layout:
            return None
        texts, owners, cuts = self._joiner.texts(layout)
        # In chunks of ~1M characters (~250k tokens): a tokenizers Encoding costs ~100 bytes
        # a token until its ids are copied out, and a batch of per-turn samples can hold
        # millions of tokens.
        parts, i = [], 0
        while i < len(texts):
            j, size = i, 0
            while j < len(texts) and (j == i or size + len(texts[j]) <= _CHUNK_CHARS):
                size += len(texts[j])
                j += 1
            parts.append(self._flat_ids(self._encode_fast(texts[i:j], where, owners[i:j])))
            i = j
        ids = np.concatenate([p[0] for p in parts])
        lens = segment_lengths(ids, np.concatenate([p[1] for p in parts]), cuts)
        return self._limit(self._chat_batch(ids, lens, layout))

    def _chat_batch(self, ids: np.ndarray, lens: np.ndarray, layout: list) -> SampleBatch:
        """Segments -> samples: a sample's tokens are its segments' tokens, in order."""
        n_seg = np.array([len(s.texts) for _, s in layout], np.int64)
        trained = np.fromiter((t for _, s in layout for t in s.trained), bool, len(lens))
        seg_starts = np.zeros(len(lens), np.int64)
        np.cumsum(lens[:-1], out=seg_starts[1:])
        sample_of = np.repeat(np.arange(len(layout)), n_seg)
        sample_lens = np.bincount(sample_of, weights=lens, minlength=len(layout)).astype(np.int64)
        sample_starts = np.zeros(len(layout), np.int64)
        np.cumsum(sample_lens[:-1], out=sample_starts[1:])
        keep = trained & (lens > 0)
        local = seg_starts[keep] - sample_starts[sample_of[keep]]
        spans = np.stack([local, local + lens[keep]], axis=1)
        for (_, s), first_len in zip(layout, lens[np.cumsum(n_seg) - n_seg]):
            if not s.first_turn:
                self.stats.extra_prompt_tokens += int(first_len)
                self.stats.turn_samples += 1
        n = len(layout)
        return SampleBatch(ids, sample_lens, np.ones(n, np.int64), np.zeros(n, np.int64),
                           np.bincount(sample_of[keep], minlength=n).astype(np.int64), spans)

    # ------------------------------------------------------------------ preference
    def _preference(self, records: list, where: Where) -> SampleBatch | None:
        texts, owners, plans = [], [], []
        for k, rec in enumerate(records):
            kind, parts = self.pairs.plan(rec, lambda why, k=k: RecordError(f"{where(k)}: {why}"))
            if kind == "empty" or (kind == "chat" and not all(parts)):
                if kind == "empty":
                    self._skip(where, k, "an empty completion")
                else:
                    self.stats.skipped_unrendered += 1
                continue
            pieces = parts if kind == "text" else [t for side in parts for t, _ in side]
            plans.append((kind, len(pieces), None if kind == "text" else [[f for _, f in side] for side in parts]))
            texts += pieces
            owners += [k] * len(pieces)
        if not plans:
            return None
        ids, lens = self._flat_ids(self._encode_fast(texts, where, owners))
        seqs = np.split(ids, np.cumsum(lens)[:-1])
        prefix = np.array(self.info.prefix_ids, np.uint32)
        kept, at = [], 0
        for kind, n, flags in plans:
            parts = seqs[at:at + n]
            at += n
            if kind == "text":  # as TRL tokenizes: with the tokenizer's own prefix (a BOS)
                parts = [np.concatenate([prefix, p]) for p in parts]
            pair = pair_sample(kind, parts, flags)
            whole = len(pair.tokens)
            pair = limit_pair(pair, self.max_length, self.overlong)
            if pair is None:
                self.stats.dropped_overlong += 1
            else:
                self.stats.truncated += len(pair.tokens) < whole
                kept.append(pair)
        return self._count(join_samples(kept, True)) if kept else None

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

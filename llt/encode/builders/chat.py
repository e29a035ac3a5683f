"""`--encode_type chat` (and `qa --qa_template chat`): each assistant turn trained on exactly
the text the model generates for it at inference, after the prompt it sees then
(`llt.encode.chat`); one sample per conversation where the template renders it prefix by
prefix, one per turn where it rewrites history. The samples' texts are tokenized in
chunks, joined where that provably gives the same ids (`chat.joins`)."""

from __future__ import annotations

import numpy as np

from llt.encode.builders.base import Builder, Where
from llt.encode.chat.encoder import ChatEncoder
from llt.encode.chat.joins import Joiner, segment_lengths
from llt.encode.chat.messages import Conversation, Message, RecordError, read_conversation
from llt.shards.writer import SampleBatch

_CHUNK_CHARS = 1 << 20  # characters tokenized per call (bounds Encoding memory)


class ChatBuilder(Builder):
    """Chat records, or q/a pairs as a user/assistant conversation (`from_qa`)."""

    def __init__(self, *args, chat: ChatEncoder, from_qa: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.chat, self.from_qa = chat, from_qa
        self._joiner = Joiner(self.tok)

    def _conversation(self, rec, where: Where, k: int) -> Conversation:
        def say(why: str) -> RecordError:
            return RecordError(f"{where(k)}: {why}")

        if self.from_qa:
            q = self._field(rec, self.names.q, where, k, str)
            a = self._field(rec, self.names.a, where, k, str)
            return Conversation([Message("user", q), Message("assistant", a)], None)
        return read_conversation(rec, self.names.messages, self.names.tools, say)

    def samples(self, records: list, where: Where) -> SampleBatch | None:
        layout = []  # (record position, ChatSample) per sample
        for k, rec in enumerate(records):
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

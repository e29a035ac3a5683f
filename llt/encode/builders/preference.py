"""Preference records (TRL's formats) -> pair samples: chosen and rejected side by side.

Records, field names being flags (`--prompt_field`, `--chosen_field`, `--rejected_field`):

* standard: `{"prompt": str, "chosen": str, "rejected": str}`. Tokenized as TRL's
  DPOTrainer does: `prompt`, `prompt + chosen + EOS` and `prompt + rejected + EOS` each
  whole (with the tokenizer's own prefix, a Llama BOS), the completion starting where the
  prompt's ids and the sequence's part (usually at the prompt's end);
* conversational: `prompt`, `chosen`, `rejected` as message lists, rendered with the chat
  template under the chat encoder's rule (`encode.chat`): the prompt as the model gets it at
  inference, each completion's assistant turns as it generates them;
* implicit prompt: `{"chosen": messages, "rejected": messages}`; the longest shared head of
  the two lists is the prompt (TRL's `extract_prompt`).

A pair is one sample of two documents, chosen then rejected, each `prompt + completion`,
loss spans on the completions only. The prompt is stored twice: each side is then an
ordinary causal sequence that attends only to itself, which every attention kernel runs
padding-free (flash-attention varlen, per-document SDPA) and which gives the same log-probs
as TRL's padded batch; sharing one prompt copy would need a mask where two documents see a
third, which varlen kernels cannot express. Packing (`--merge_data`) moves whole samples,
so the two sides always travel together.
"""

from __future__ import annotations

import numpy as np

from llt.encode.builders.base import Builder, Where
from llt.encode.chat.encoder import ChatEncoder
from llt.encode.chat.messages import Conversation, RecordError, read_conversation
from llt.encode.sample import Sample, join_samples
from llt.shards.writer import SampleBatch


def implicit_prompt(chosen: list, rejected: list) -> int:
    """How many leading messages the two sides share (TRL's implicit prompt).

    Examples:
        >>> u, a, b = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, \\
        ...     {"role": "assistant", "content": "b"}
        >>> implicit_prompt([u, a], [u, b])
        1
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two id arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class PairBuilder:
    """Preference records -> (texts to tokenize, how to assemble each sample). `sides`: the
    completion fields, (chosen, rejected) for pairs or (completion,) for KTO examples."""

    def __init__(self, chat: ChatEncoder | None, prompt_field: str, sides: tuple[str, ...], prefix: list[int],
                 eos_token: str | None, messages_tools: str = "tools"):
        self.chat, self.prompt_field, self.sides = chat, prompt_field, sides
        self.prefix, self.eos_token, self.tools_field = prefix, eos_token, messages_tools

    def _field(self, rec, name: str, say):
        if name not in rec:
            raise say(f"missing field {name!r} (fields: {', '.join(map(repr, rec)) or 'none'})")
        return rec[name]

    def _names(self) -> str:
        return " and ".join(map(repr, self.sides))

    def plan(self, rec, say) -> tuple[str, list]:
        """("text", [prompt, prompt+side+eos for each side]) for a standard record, or
        ("chat", [segments of each side]) (text, trained) for a conversational one."""
        if not isinstance(rec, dict):
            raise say(f"expected an object with field{'s' * (len(self.sides) > 1)} {self._names()}, "
                      f"got {type(rec).__name__}")
        comps = [self._field(rec, name, say) for name in self.sides]
        prompt = rec.get(self.prompt_field)
        if prompt is None and len(comps) == 1:  # an example's prompt is never implicit (as in TRL)
            raise say(f"missing field {self.prompt_field!r} (fields: {', '.join(map(repr, rec))})")
        if all(isinstance(c, str) for c in comps):
            if not isinstance(prompt, str):
                raise say(f"field {self.prompt_field!r} must be a string when {self._names()} "
                          f"{'are strings' if len(comps) > 1 else 'is a string'}"
                          + (" (the implicit prompt form takes message lists)" if len(comps) == 2 else ""))
            if not all(comps):
                return "empty", []
            eos = self.eos_token or ""
            return "text", [prompt] + [prompt + c + (eos if not c.endswith(eos) else "") for c in comps]
        if not all(isinstance(c, list) for c in comps):
            kinds = " and ".join(type(c).__name__ for c in comps)
            raise say(f"fields {self._names()} must both be strings or both message lists, got {kinds}"
                      if len(comps) > 1 else f"field {self._names()} must be a string or a message list, "
                      f"got {kinds}")
        if prompt is None and len(comps) == 2:
            n = implicit_prompt(*comps)
            prompt, comps = comps[0][:n], [c[n:] for c in comps]
        elif not isinstance(prompt, list):
            raise say(f"field {self.prompt_field!r} must be a message list like the completion"
                      + ("s" if len(comps) > 1 else ""))
        if self.chat is None:
            raise say("conversational preference records need the tokenizer's chat template "
                      "(or --chat_template FILE)")
        return "chat", [self._side(rec, prompt, side, name, say) for side, name in zip(comps, self.sides)]

    def _side(self, rec, prompt: list, side: list, name: str, say) -> list:
        def say_side(why: str) -> RecordError:
            return say(f"{name}: {why}")

        conv = read_conversation({"messages": prompt + side, "tools": rec.get(self.tools_field)},
                                 "messages", "tools", say_side)
        if not any(m.role == "assistant" for m in conv.messages[len(prompt):]):
            raise say_side("the completion has no assistant message")
        samples = self.chat.samples(Conversation(conv.messages, conv.tools), say_side, start=len(prompt))
        if samples is None:
            return []
        if len(samples) != 1:
            raise say_side("the chat template renders this completion's turns differently once later "
                           "turns follow, so they are not one sequence; give one assistant turn per completion")
        return list(zip(samples[0].texts, samples[0].trained))


def pair_sample(kind: str, seqs: list[np.ndarray], trained: list[list[bool]] | None) -> Sample:
    """One record as a sample of one document per side (a pair: chosen then rejected).

    "text": `seqs` is [prompt, prompt+side, ...] ids; each completion starts where the
    prompt's ids and the sequence's part (TRL's `common_prefix_length`; for a pair, the
    earlier of the two sides').
    "chat": `seqs` holds each side's segment ids in order, `trained` each segment's flag.
    """
    if kind == "text":
        prompt, *full = seqs
        start = min(common_prefix(prompt, f) for f in full)
        sides = [(f, np.array([[start, len(f)]], np.int64)) for f in full]
    else:
        sides, at = [], 0
        for flags in trained:
            segs = seqs[at:at + len(flags)]
            at += len(flags)
            ends = np.cumsum([len(s) for s in segs])
            spans = [(e - len(s), e) for s, e, t in zip(segs, ends, flags) if t and len(s)]
            sides.append((np.concatenate(segs), np.array(spans, np.int64).reshape(-1, 2)))
    offsets = np.concatenate([[0], np.cumsum([len(t) for t, _ in sides])[:-1]]).astype(np.int64)
    return Sample(np.concatenate([t for t, _ in sides]).astype(np.uint32),
                  np.concatenate([sp + off for (_, sp), off in zip(sides, offsets)]), offsets)


def limit_pair(s: Sample, max_length: int, overlong: str) -> Sample | None:
    """`--overlong` for a sample longer than `max_length`: None (drop), or with `truncate`
    each side cut to its first max_length // sides tokens; dropped anyway if a side keeps
    no trained token (a pair needs both completions, an example its one)."""
    if len(s.tokens) <= max_length:
        return s
    if overlong != "truncate":
        return None
    part = max_length // len(s.docs)
    bounds = list(s.docs) + [len(s.tokens)]
    out_tokens, out_spans = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        keep = min(hi - lo, part)
        spans = s.spans[(s.spans[:, 0] >= lo) & (s.spans[:, 0] < lo + keep)] - lo
        spans = np.minimum(spans, keep)
        if not len(spans) or not (spans[:, 1] > spans[:, 0]).any():
            return None
        out_spans.append(spans + sum(len(t) for t in out_tokens))
        out_tokens.append(s.tokens[lo:lo + keep])
    docs = np.concatenate([[0], np.cumsum([len(t) for t in out_tokens])[:-1]]).astype(np.int64)
    return Sample(np.concatenate(out_tokens), np.concatenate(out_spans), docs, s.doc_arrays)


class PreferenceBuilder(Builder):
    """Preference records in, pair samples out (see the module docstring)."""

    def __init__(self, *args, chat: ChatEncoder | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        n = self.names
        self.pairs = PairBuilder(chat, n.prompt, self.side_fields(), self.info.prefix_ids, self.info.eos_token,
                                 n.tools)

    def side_fields(self) -> tuple[str, ...]:
        return self.names.chosen, self.names.rejected

    def doc_values(self, rec, say) -> dict[str, np.ndarray]:
        """The record's per-document values (`format.DOC_ARRAYS`): with --margin_field, each
        side's copy of the pair's margin."""
        name = self.names.margin
        if name is None:
            return {}
        if name not in rec:
            raise say(f"missing field {name!r} (--margin_field; fields: {', '.join(map(repr, rec))})")
        value = rec[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value):
            raise say(f"field {name!r} is {value!r}, not a finite number (--margin_field)")
        return {"doc_margins": np.full(2, value, np.float32)}

    def samples(self, records: list, where: Where) -> SampleBatch | None:
        texts, owners, plans = [], [], []
        for k, rec in enumerate(records):
            say = lambda why, k=k: RecordError(f"{where(k)}: {why}")
            kind, parts = self.pairs.plan(rec, say)
            values = self.doc_values(rec, say)
            if kind == "empty" or (kind == "chat" and not all(parts)):
                if kind == "empty":
                    self._skip(where, k, "an empty completion")
                else:
                    self.stats.skipped_unrendered += 1
                continue
            pieces = parts if kind == "text" else [t for side in parts for t, _ in side]
            plans.append((kind, len(pieces), None if kind == "text" else [[f for _, f in side] for side in parts],
                          values))
            texts += pieces
            owners += [k] * len(pieces)
        if not plans:
            return None
        ids, lens = self._flat_ids(self._encode_fast(texts, where, owners))
        seqs = np.split(ids, np.cumsum(lens)[:-1])
        prefix = np.array(self.info.prefix_ids, np.uint32)
        kept, at = [], 0
        for kind, n, flags, values in plans:
            parts = seqs[at:at + n]
            at += n
            if kind == "text":  # as TRL tokenizes: with the tokenizer's own prefix (a BOS)
                parts = [np.concatenate([prefix, p]) for p in parts]
            pair = pair_sample(kind, parts, flags)
            pair.doc_arrays = values
            whole = len(pair.tokens)
            pair = limit_pair(pair, self.max_length, self.overlong)
            if pair is None:
                self.stats.dropped_overlong += 1
            else:
                self.stats.truncated += len(pair.tokens) < whole
                kept.append(pair)
        return self._count(join_samples(kept, True)) if kept else None

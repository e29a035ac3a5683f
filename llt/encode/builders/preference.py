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
    """Preference records -> (texts to tokenize, how to assemble each pair)."""

    def __init__(self, chat: ChatEncoder | None, fields: tuple[str, str, str], prefix: list[int],
                 eos_token: str | None, messages_tools: str = "tools"):
        self.chat, self.prompt_field, self.chosen_field, self.rejected_field = chat, *fields
        self.prefix, self.eos_token, self.tools_field = prefix, eos_token, messages_tools

    def _field(self, rec, name: str, say):
        if name not in rec:
            raise say(f"missing field {name!r} (fields: {', '.join(map(repr, rec)) or 'none'})")
        return rec[name]

    def plan(self, rec, say) -> tuple[str, list]:
        """("text", [prompt, prompt+chosen+eos, prompt+rejected+eos]) for a standard record,
        or ("chat", [chosen segments, rejected segments]) (text, trained) for a
        conversational one."""
        if not isinstance(rec, dict):
            raise say(f"expected an object with fields {self.chosen_field!r} and {self.rejected_field!r}, "
                      f"got {type(rec).__name__}")
        chosen, rejected = self._field(rec, self.chosen_field, say), self._field(rec, self.rejected_field, say)
        prompt = rec.get(self.prompt_field)
        if isinstance(chosen, str) and isinstance(rejected, str):
            if not isinstance(prompt, str):
                raise say(f"field {self.prompt_field!r} must be a string when {self.chosen_field!r} and "
                          f"{self.rejected_field!r} are strings (the implicit prompt form takes message lists)")
            if not chosen or not rejected:
                return "empty", []
            eos = self.eos_token or ""
            return "text", [prompt, prompt + chosen + (eos if not chosen.endswith(eos) else ""),
                            prompt + rejected + (eos if not rejected.endswith(eos) else "")]
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise say(f"fields {self.chosen_field!r} and {self.rejected_field!r} must both be strings or "
                      f"both message lists, got {type(chosen).__name__} and {type(rejected).__name__}")
        if prompt is None:
            n = implicit_prompt(chosen, rejected)
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        elif not isinstance(prompt, list):
            raise say(f"field {self.prompt_field!r} must be a message list like the completions")
        if self.chat is None:
            raise say("conversational preference records need the tokenizer's chat template "
                      "(or --chat_template FILE)")
        return "chat", [self._side(rec, prompt, side, name, say)
                        for side, name in ((chosen, self.chosen_field), (rejected, self.rejected_field))]

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
    """One pair as a sample of two documents, chosen then rejected.

    "text": `seqs` is [prompt, prompt+chosen, prompt+rejected] ids; each completion starts
    where the prompt's ids and the sequence's part (TRL's `common_prefix_length`).
    "chat": `seqs` holds each side's segment ids in order, `trained` each segment's flag.
    """
    if kind == "text":
        prompt, chosen, rejected = seqs
        start = min(common_prefix(prompt, chosen), common_prefix(prompt, rejected))
        sides = [(chosen, np.array([[start, len(chosen)]], np.int64)),
                 (rejected, np.array([[start, len(rejected)]], np.int64))]
    else:
        half = len(trained[0])
        sides = []
        for segs, flags in ((seqs[:half], trained[0]), (seqs[half:], trained[1])):
            ends = np.cumsum([len(s) for s in segs])
            spans = [(e - len(s), e) for s, e, t in zip(segs, ends, flags) if t and len(s)]
            sides.append((np.concatenate(segs), np.array(spans, np.int64).reshape(-1, 2)))
    (c, cs), (r, rs) = sides
    return Sample(np.concatenate([c, r]).astype(np.uint32), np.concatenate([cs, rs + len(c)]),
                  np.array([0, len(c)], np.int64))


def limit_pair(s: Sample, max_length: int, overlong: str) -> Sample | None:
    """`--overlong` for a pair longer than `max_length`: None (drop), or with `truncate` each
    side cut to its first max_length // 2 tokens; dropped anyway if a side keeps no
    trained token (a pair needs both completions)."""
    if len(s.tokens) <= max_length:
        return s
    if overlong != "truncate":
        return None
    half, mid = max_length // 2, int(s.docs[1])
    out_tokens, out_spans = [], []
    for lo, hi in ((0, mid), (mid, len(s.tokens))):
        keep = min(hi - lo, half)
        spans = s.spans[(s.spans[:, 0] >= lo) & (s.spans[:, 0] < lo + keep)] - lo
        spans = np.minimum(spans, keep)
        if not len(spans) or not (spans[:, 1] > spans[:, 0]).any():
            return None
        out_spans.append(spans + sum(len(t) for t in out_tokens))
        out_tokens.append(s.tokens[lo:lo + keep])
    return Sample(np.concatenate(out_tokens), np.concatenate(out_spans),
                  np.array([0, len(out_tokens[0])], np.int64))


class PreferenceBuilder(Builder):
    """Preference records in, pair samples out (see the module docstring)."""

    def __init__(self, *args, chat: ChatEncoder | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        n = self.names
        self.pairs = PairBuilder(chat, (n.prompt, n.chosen, n.rejected), self.info.prefix_ids,
                                 self.info.eos_token, n.tools)

    def samples(self, records: list, where: Where) -> SampleBatch | None:
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

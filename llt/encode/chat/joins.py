"""Which chat texts go to the tokenizer as one, and how their tokens split back.

The turn rule tokenizes a turn's prompt and the turn apart, as at inference. `tokenizers`
pays per text (Qwen2.5, 10,000 conversations: the prompts and turns as 65,000 texts cost
9% more than the same characters as 10,000), so where one text provably gives the same
ids as its parts, the parts go as one. Two kinds of joint:

* **After a hard special token** (`hard_ends`: special, nothing stripped around it). The
  added-vocabulary split makes it a segment of its own; the text after it starts a new
  segment, tokenized as if alone. The turn `...<|im_end|>` and the prompt after it.
* **After a prompt that ends in a newline, before a turn that starts with an ASCII
  non-space character**, for tokenizers whose pre-tokenizer is a GPT-2-family regex split
  (GPT-2's own in ByteLevel, optionally after single digits; Llama 3's and Qwen2's in a
  Split before ByteLevel), whose normalizer is none or NFC, and whose added tokens hold no
  newline and strip nothing to their left. Why it is exact: those regexes have no
  lookbehind and no anchors, and their one lookahead (`\\s+(?!\\S)`) reads one character.
  A lone newline after a non-space character is a pre-token of its own whether the text
  ends there or the turn follows (`\\s*[\\r\\n]+`, or `\\s+` when `\\s+(?!\\S)` sees the
  turn), no match can carry it into a non-space character, and the match at the turn's
  first character starts as at the start of a text; NFC never composes across an ASCII
  character. The prompt's tail after its last hard special token (`assistant\\n`) then
  tokenizes as alone: its count is cached, and the cut is found after that special token.

`tests/test_joins.py` compares joint and separate tokenization on adversarial boundaries
(spaces before the newline, digits, contractions, combining marks, added tokens) with the
Qwen2.5 and SmolLM2 tokenizers and the families' test tokenizers.
"""

from __future__ import annotations

import json

import numpy as np

# Regex pre-tokenizers of the GPT-2 family whose behaviour at a newline the docstring argues.
_SPLIT_PATTERNS = frozenset({
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",  # Qwen2
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",  # Llama 3
})
_TAIL_MAX = 64  # characters between the prompt's last hard special token and its end


def hard_ends(tok) -> dict[str, int]:
    """Special tokens the tokenizer always splits out whole, stripping nothing around them."""
    out = {}
    for tid, t in getattr(tok, "added_tokens_decoder", {}).items():
        if t.special and not (t.lstrip or t.rstrip or t.single_word or t.normalized):
            out[t.content] = tid
    return out


def _state(component) -> dict | None:
    return json.loads(component.__getstate__()) if component is not None else None


def _byte_level(p: dict, regex: bool) -> bool:
    return p.get("type") == "ByteLevel" and not p.get("add_prefix_space") and bool(p.get("use_regex")) == regex


def newline_joins_exact(tok) -> bool:
    """True when a prompt ending in a newline and a turn starting with an ASCII non-space
    character tokenize as one exactly as apart (the module docstring says why)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "BPE":
        return False
    norm, pre = _state(backend.normalizer), _state(backend.pre_tokenizer)
    if norm is not None and norm.get("type") != "NFC":
        return False
    parts = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    if len(parts) == 2 and parts[0] and parts[0].get("type") == "Digits" and parts[0].get("individual_digits"):
        parts = parts[1:]
    ok = (len(parts) == 1 and parts[0] is not None and _byte_level(parts[0], True)) or (
        len(parts) == 2 and parts[0] and parts[0].get("type") == "Split" and not parts[0].get("invert")
        and parts[0].get("behavior") == "Isolated" and parts[0].get("pattern", {}).get("Regex") in _SPLIT_PATTERNS
        and _byte_level(parts[1], False))
    added = getattr(tok, "added_tokens_decoder", {}).values()
    return ok and not any("\n" in t.content for t in added)


class Joiner:
    """Groups a sample's segments into the texts the tokenizer gets, with their cuts."""

    def __init__(self, tok):
        self.hard = hard_ends(tok)
        self._ends = tuple(self.hard)
        self._end_chars = frozenset(e[-1] for e in self._ends)
        self._last_end = self._ends[0] if self._ends else None  # the hard end found last
        self.newline = newline_joins_exact(tok)
        self._lstrip = tuple(t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.lstrip)
        self._backend = tok.backend_tokenizer
        self._leads = list(self.hard)  # most recently found first
        self._tails: dict[str, int | None] = {}
        self._window = _TAIL_MAX + max(map(len, self._ends), default=0)  # where a tail's lead can be

    def texts(self, layout: list) -> tuple[list[str], list[int], list[list[tuple[int, int, int]]]]:
        """(texts to tokenize, owner record of each, cuts of each) for `layout`
        [(record, ChatSample)]. A cut (id, k, extra) falls `extra` tokens after the k-th
        occurrence of token `id` in that text's ids; segment j ends at cut j."""
        texts, owners, cuts = [], [], []
        for owner, s in layout:
            segs = s.texts
            start, piece_cuts, counts = 0, [], {}
            for j in range(1, len(segs)):
                cut = self._cut(segs, start, j, counts)
                if cut is None:
                    texts.append("".join(segs[start:j]))
                    owners.append(owner)
                    cuts.append(piece_cuts)
                    start, piece_cuts, counts = j, [], {}
                else:
                    piece_cuts.append(cut)
            texts.append("".join(segs[start:]))
            owners.append(owner)
            cuts.append(piece_cuts)
        return texts, owners, cuts

    def _cut(self, segs: list[str], start: int, j: int, counts: dict) -> tuple[int, int, int] | None:
        """The cut between segments j-1 and j when they can go as one text, else None."""
        prev, nxt = segs[j - 1], segs[j]
        last = prev[-1:]
        if last in self._end_chars:
            end = self._last_end if prev.endswith(self._last_end) else next(
                (e for e in self._ends if prev.endswith(e)), None)
            if end is not None:
                self._last_end = end
                return self.hard[end], _count(end, segs, start, j, counts), 0
        if last != "\n" or not self.newline or not nxt or len(prev) < 2 or prev[-2].isspace():
            return None
        first = nxt[0]
        if not first.isascii() or first.isspace() or (self._lstrip and nxt.startswith(self._lstrip)):
            return None
        found = self._last_hard(prev)
        if found is None:
            return None
        lead, n = found
        return self.hard[lead], _count(lead, segs, start, j, counts), n

    def _last_hard(self, prev: str) -> tuple[str, int] | None:
        """The last hard special token in `prev`'s last characters, and the tokens of the
        tail after it alone; None when there is none, or the tail is not one to join after."""
        start = max(0, len(prev) - self._window)
        for lead in self._leads:  # the one found last time first: one rfind
            at = prev.rfind(lead, start)
            if at < 0:
                continue
            n = self._tail_tokens(prev[at + len(lead):])
            if n is None:  # another hard token after it (or a long tail): take the last one
                end, lead = max((a + len(e), e) for e in self._ends if (a := prev.rfind(e, start)) >= 0)
                n = self._tail_tokens(prev[end:])
            if n is not None and lead != self._leads[0]:
                self._leads.remove(lead)
                self._leads.insert(0, lead)
            return None if n is None else (lead, n)
        return None

    def _tail_tokens(self, tail: str) -> int | None:
        """Tokens of the text after the prompt's last hard special token, alone, cached (None:
        not a tail to join after: too long, or another hard special token inside it)."""
        if tail not in self._tails:
            ok = len(tail) <= _TAIL_MAX and not any(e in tail for e in self._ends)
            self._tails[tail] = len(self._backend.encode(tail, add_special_tokens=False)) if ok else None
        return self._tails[tail]


def _count(token: str, segs: list[str], start: int, j: int, counts: dict) -> int:
    """Occurrences of `token` in segments start..j-1 (the text so far), each counted once."""
    upto, n = counts.get(token, (start, 0))
    for k in range(upto, j):
        n += segs[k].count(token)
    counts[token] = (j, n)
    return n


def segment_lengths(ids: np.ndarray, lens: np.ndarray, cuts: list) -> np.ndarray:
    """Token counts per segment, from the counts per joined text and its cuts (`Joiner`).

    Vectorized: a cut's special token is found among all its occurrences in the batch (one
    pass over the ids per distinct token id, not one per text).
    """
    lens = np.asarray(lens, np.int64)
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    flat = [(i, *c) for i, cs in enumerate(cuts) for c in cs]
    if not flat:
        return lens
    piece, tid, k, extra = (np.array(col, np.int64) for col in zip(*flat))
    at = np.zeros(len(flat), np.int64)
    for t in set(tid.tolist()):  # not np.unique: it imports numpy.ma (20 ms a fresh worker)
        sel = tid == t
        where = np.flatnonzero(ids == t)
        nth = np.searchsorted(where, starts[piece[sel]]) + k[sel] - 1
        at[sel] = where[np.minimum(nth, max(len(where) - 1, 0))] if len(where) else -1
    pos = at + 1 + extra  # the cut, in the batch's ids
    bounds = np.concatenate([starts, pos, [int(lens.sum())]])
    order = np.concatenate([np.arange(len(lens)) * 2, piece * 2 + 1, [2 * len(lens)]])
    bounds = bounds[np.argsort(order, kind="stable")]  # each text's start, then its cuts, in order
    out = np.diff(bounds)
    inside = (pos > starts[piece]) & (pos <= starts[piece] + lens[piece])
    if (out < 0).any() or not inside.all():
        raise AssertionError("a joined text did not tokenize as its parts")  # a bug, not user data
    return out

"""Rewards for the arithmetic task: exact match of the last number, and a format reward
for a reply that is the number alone."""
import re

NUMBER = re.compile(r"-?\d+")


def _text(c):
    return c[0]["content"] if isinstance(c, list) else c


def correct(completions, answer, **kw):
    """1 when the reply's last number is the sum ("3 + 5 = 8" counts)."""
    out = []
    for c, a in zip(completions, answer):
        found = NUMBER.findall(_text(c))
        out.append(1.0 if found and found[-1] == a else 0.0)
    return out


def number_only(completions, **kw):
    """1 for a reply that is one number (a full stop allowed), 0.5 for one that starts with
    a number, else 0."""
    out = []
    for c in completions:
        t = _text(c).strip()
        out.append(1.0 if re.fullmatch(r"-?\d+\.?", t) else 0.5 if NUMBER.match(t) else 0.0)
    return out

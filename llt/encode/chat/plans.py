"""Shape plans: the turn rule run once per conversation shape instead of once per record.

The rule renders a conversation twice per assistant turn, which on 2 cores cost more than
tokenizing it. Conversations of plain messages (text content, optional reasoning, no
tools) instead follow a plan made once per shape (the roles in order, and which messages
have content and reasoning): the rule is run on the shape with placeholder texts, and a
record's samples are the plan's texts with its own texts put in. Each record is still
rendered once, whole, and must equal the plan's render filled the same way; any
difference (a template that trims, splits or tests the text) sends that record through
the rule itself. `llt inspect --check` re-renders sampled records turn by turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llt.encode.chat.messages import Conversation, Message
from llt.encode.chat.rule import ChatOptions, ChatSample, turn_samples

_SLOT = re.compile("\ue000(\\d+)\ue001")  # a placeholder: private-use characters around a number
_MAX_SHAPES = 4096  # shapes are few in real data; bound the memory anyway


def _slot(k: int) -> str:
    return f"\ue000{k}\ue001"


@dataclass
class ShapePlan:
    """The samples of one conversation shape, as format strings: `{k}` is slot k, and a
    record's texts go in with `str.format` (C speed; braces in the template are doubled)."""

    full: str  # the whole conversation's render
    samples: list[tuple[list[str], list[bool], bool]]  # per sample: segments, trained, first_turn

    @staticmethod
    def parts(text: str) -> str:
        pieces = _SLOT.split(text)
        return "".join("{%s}" % p if k % 2 else p.replace("{", "{{").replace("}", "}}")
                       for k, p in enumerate(pieces))


def plain_values(conv: Conversation) -> list[str] | None:
    """A plain conversation's texts in slot order (content, reasoning per message), or None
    when it is not plain (tools, tool calls, or a text holding a placeholder character)."""
    if conv.tools is not None:
        return None
    values = []
    for m in conv.messages:
        if m.tool_calls or m.extra or m.content is None:
            return None
        values += (m.content, m.reasoning or "")
    if any("\ue000" in v for v in values):
        return None
    return values


class ShapePlans:
    """The plans of one template and options, made as shapes are met."""

    def __init__(self, template, options: ChatOptions):
        self.template, self.options = template, options
        self._plans: dict[tuple, ShapePlan | None] = {}

    def samples(self, conv: Conversation, start: int = 0) -> list[ChatSample] | None:
        """The conversation's samples by its shape's plan; None when it has no plan or its
        render differs from the plan's."""
        values = plain_values(conv)
        if values is None:
            return None
        shape = (start, *((m.role, bool(m.content), bool(m.reasoning)) for m in conv.messages))
        return self._fill(shape, values, self.template.to_dicts(conv.messages))

    def _fill(self, shape: tuple, values: list[str], dicts: list[dict]) -> list[ChatSample] | None:
        """The shape's plan filled with `values`, if its render equals the record's own."""
        plan = self._plans[shape] if shape in self._plans else self._plan(shape)
        if plan is None or self.template.render(dicts, None, False) != plan.full.format(*values):
            return None
        return [ChatSample([p.format(*values) for p in segs], list(trained), first)
                for segs, trained, first in plan.samples]

    def _plan(self, shape: tuple) -> ShapePlan | None:
        """Run the rule once on the shape with placeholder texts (None: no plan for it)."""
        if len(self._plans) >= _MAX_SHAPES:
            self._plans.clear()
        start, *roles = shape
        msgs = [Message(role, _slot(2 * j) if content else "", _slot(2 * j + 1) if reasoning else None)
                for j, (role, content, reasoning) in enumerate(roles)]
        plan = None
        try:
            samples = turn_samples(self.template, Conversation(msgs, None), self.options, ValueError, start)
            full = self.template.render(self.template.to_dicts(msgs), None, False)
            if samples is not None:
                plan = ShapePlan(ShapePlan.parts(full), [
                    ([ShapePlan.parts(t) for t in s.texts], s.trained, s.first_turn) for s in samples])
        except Exception:  # noqa: BLE001 - a shape the rule refuses: its records take the rule
            plan = None
        self._plans[shape] = plan
        return plan

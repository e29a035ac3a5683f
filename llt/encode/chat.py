"""Chat records -> samples whose trained tokens are exactly what the model generates.

For each assistant turn the template gives two texts (`chat_template.ChatTemplate`): the
prompt the model sees at inference, and the text it generates for the turn. Each is
tokenized on its own, as at inference (the prompt is tokenized whole, the turn is what
the model emits after it), and only the turn's tokens are trained.

Turns share one sample while each prompt continues the sample so far (templates that
render a conversation prefix by prefix: one sample per conversation). Where a template
renders history differently from the turn being generated (Qwen3 drops earlier reasoning,
gpt-oss ends earlier turns with `<|end|>` instead of `<|return|>`, Mistral moves the tools
and system prompt before the last user turn), the turn starts a new sample with the
conversation so far, as history, untrained; the tokens this repeats are counted
(`extra_prompt_tokens`). `--train_turns last` trains only each conversation's last
assistant turn (one sample a conversation).

A turn whose content, reasoning or tool calls do not appear in its generated text (a
template that drops them) is an error naming the record and message, or with
`--unrendered skip` a counted skip of the conversation; never a sample trained without it.

Speed: the rule renders the conversation twice per assistant turn, which on 2 cores cost
more than tokenizing it. Conversations of plain messages (text content, optional
reasoning, no tools) instead follow a plan made once per shape (the roles in order, and
which messages have reasoning): the rule is run on the shape with placeholder texts, and a
record's samples are the plan's texts with its own texts put in. Each record is still
rendered once, whole, and must equal the plan's render filled the same way; any
difference (a template that trims, splits or tests the text) sends that record through
the rule itself. `llt inspect --check` re-renders sampled records turn by turn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from llt.encode.chat_template import ChatTemplate, TurnError
from llt.encode.messages import ROLES, Conversation, Message


@dataclass
class ChatOptions:
    train_turns: str = "all"  # "all" | "last"
    unrendered: str = "error"  # "error" | "skip"


@dataclass
class ChatSample:
    """A sample as text segments; segment k is trained when `trained[k]`."""

    texts: list[str] = field(default_factory=list)
    trained: list[bool] = field(default_factory=list)
    first_turn: bool = True  # False: it repeats history another sample of the record holds


def missing_parts(m: Message, text: str) -> list[str]:
    """What of message `m` its generated `text` lacks (empty when nothing is missing).

    Examples:
        >>> missing_parts(Message("assistant", "Paris."), "Paris.<|im_end|>")
        []
        >>> missing_parts(Message("assistant", None, "think", [{"name": "f", "arguments": {}}]), "x")
        ['reasoning', "tool call 'f'"]
    """
    missing = []
    if m.content and m.content.strip() not in text:
        missing.append("content")
    if m.reasoning and m.reasoning.strip() not in text:
        missing.append("reasoning")
    for call in m.tool_calls or ():
        ok = call["name"] in text and all(_arg_shown(k, v, text) for k, v in call["arguments"].items())
        if not ok:
            missing.append(f"tool call {call['name']!r}")
    return missing


def _arg_shown(key: str, value, text: str) -> bool:
    if key not in text:
        return False
    if isinstance(value, str):  # as written, or JSON-escaped inside a JSON rendering
        return value in text or json.dumps(value, ensure_ascii=False)[1:-1] in text
    return True


_ROLES = frozenset(ROLES)
_SLOT = re.compile("\ue000(\\d+)\ue001")  # a placeholder: private-use characters around a number


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

    @staticmethod
    def fill(fmt: str, values: list[str]) -> str:
        return fmt.format(*values)


def _values(conv: Conversation) -> list[str] | None:
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


class ChatEncoder:
    """One conversation in, its `ChatSample`s out."""

    def __init__(self, template: ChatTemplate, options: ChatOptions):
        self.template, self.options = template, options
        self._plans: dict[tuple, ShapePlan | None] = {}
        self.planned = self.exact = 0  # conversations each way (for tests and the bench)

    def samples(self, conv: Conversation, say, start: int = 0) -> list[ChatSample] | None:
        """The conversation's samples; None for a counted skip (--unrendered skip).

        `say(why)` builds the RecordError that names the record. Only assistant turns from
        message `start` on are trained (a preference pair's completion after its prompt).
        """
        values = _values(conv)
        if values is not None:
            shape = (start, *((m.role, bool(m.content), bool(m.reasoning)) for m in conv.messages))
            out = self._by_plan(shape, values, self.template.to_dicts(conv.messages))
            if out is not None:
                return out
        self.exact += 1
        return self._exact(conv, say, start)

    def plain_samples(self, msgs: list) -> list[ChatSample] | None:
        """The samples of a record's raw `messages` when every message is exactly
        `{"role", "content": str}`, some assistant content is non-empty and the record
        has no tools, by its shape's plan (the commonest SFT record, without building
        `Message`s); None otherwise: the caller takes `samples`, which checks and names."""
        values, shape, answered = [], [0], False
        for m in msgs:
            if type(m) is not dict or len(m) != 2:
                return None
            role, content = m.get("role"), m.get("content")
            if type(content) is not str or role not in _ROLES or "\ue000" in content:
                return None
            answered = answered or (role == "assistant" and bool(content))
            values += (content, "")
            shape.append((role, bool(content), False))
        # the record's own dicts are what to_dicts would build ({role, content}); a template
        # that reads their key order differently renders unlike the plan and falls back
        return self._by_plan(tuple(shape), values, msgs) if answered else None

    def _by_plan(self, shape: tuple, values: list[str], dicts: list[dict]) -> list[ChatSample] | None:
        """The shape's plan filled with `values`, if its render equals the record's own."""
        plan = self._plans[shape] if shape in self._plans else self._plan(shape)
        if plan is None or self.template.render(dicts, None, False) != ShapePlan.fill(plan.full, values):
            return None
        self.planned += 1
        return [ChatSample([ShapePlan.fill(p, values) for p in segs], list(trained), first)
                for segs, trained, first in plan.samples]

    def _plan(self, shape: tuple) -> ShapePlan | None:
        """Run the rule once on the shape with placeholder texts (None: no plan for it)."""
        if len(self._plans) >= 4096:  # shapes are few in real data; bound the memory anyway
            self._plans.clear()
        start, *roles = shape
        msgs = [Message(role, _slot(2 * j) if content else "", _slot(2 * j + 1) if reasoning else None)
                for j, (role, content, reasoning) in enumerate(roles)]
        conv = Conversation(msgs, None)
        plan = None
        try:
            samples = self._exact(conv, ValueError, start)
            full = self.template.render(self.template.to_dicts(msgs), None, False)
            if samples is not None:
                plan = ShapePlan(ShapePlan.parts(full), [
                    ([ShapePlan.parts(t) for t in s.texts], s.trained, s.first_turn) for s in samples])
        except Exception:  # noqa: BLE001 - a shape the rule refuses: its records take the rule
            plan = None
        self._plans[shape] = plan
        return plan

    def _exact(self, conv: Conversation, say, start: int = 0) -> list[ChatSample] | None:
        """The turn rule itself: two renders per assistant turn."""
        tpl = self.template
        dicts = tpl.to_dicts(conv.messages)
        turns = [i for i, m in enumerate(conv.messages)
                 if i >= start and m.role == "assistant" and (m.content or m.reasoning or m.tool_calls)]
        if self.options.train_turns == "last":
            turns = turns[-1:]
        out: list[ChatSample] = []
        so_far = None  # the text of the current sample
        for i in turns:
            try:
                prompt = tpl.prompt(dicts[:i], conv.tools, dicts[i])
                m = conv.messages[i]
                first = m.reasoning or m.content or (m.tool_calls[0]["name"] if m.tool_calls else "")
                turn = tpl.generated(prompt, tpl.render(dicts[: i + 1], conv.tools, False),
                                     lambda i=i: tpl.render(dicts[:i], conv.tools, False) if i else "",
                                     first)
            except TurnError as e:
                raise say(f"message {i}: {e}") from None
            except Exception as e:  # noqa: BLE001 - jinja errors come from user data
                raise say(f"the chat template failed on message {i}: {type(e).__name__}: {e}") from None
            missing = missing_parts(conv.messages[i], turn)
            if missing:
                if self.options.unrendered == "skip":
                    return None
                raise say(f"message {i}: its {', '.join(missing)} does not appear in what the chat "
                          f"template renders for that turn ({turn[:120]!r}); the template drops it. "
                          "Encode with a template that keeps it (--chat_template FILE), or skip such "
                          "conversations with --unrendered skip")
            if so_far is not None and prompt.startswith(so_far):
                cur = out[-1]
                cur.texts += [prompt[len(so_far):], turn]
                cur.trained += [False, True]
            else:
                out.append(ChatSample([prompt, turn], [False, True], first_turn=not out))
            so_far = prompt + turn
        return out

"""Chat records in the form the ecosystem uses (OpenAI / TRL conversational), checked and
brought to one shape before a chat template sees them.

A record holds `messages` (roles system, developer, user, assistant, tool; `ipython` is
Llama's name for tool) and, optionally, a record-level `tools` list of JSON schemas (a list,
or that list as a JSON string, as Parquet datasets often store it). An assistant message
may carry:

* `content`: a string, a list of text parts (`{"type": "text", "text": ...}` or strings,
  joined without separator, as OpenAI joins them), or null when it only calls tools;
* reasoning under `reasoning_content`, or its aliases `thinking` and `reasoning`, or as a
  `{"type": "thinking", "thinking": ...}` chunk first in `content` (Mistral's reasoning
  models); other parts (images, audio, files) are refused, naming the part;
* `tool_calls`: `[{"type": "function", "id": ..., "function": {"name", "arguments"}}]`,
  arguments as an object or a JSON string (the flat `{"name", "arguments"}` form is also
  taken). Every call's arguments are parsed here, so a malformed one is an error naming
  the record, message and call, never a string a template would quote twice.

How a given template wants these (arguments as text or object, empty content as null or
""; reasoning as a field or inside `<think>` tags) is decided by `chat_template.Style`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from llt.errors import LltError

ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_ROLE_SET = frozenset(ROLES)


class RecordError(LltError, ValueError):
    """A user record cannot be encoded. The message names the source and record."""


@dataclass(slots=True)
class Message:
    """One message, checked: content and reasoning as text, tool calls parsed."""

    role: str
    content: str | None
    reasoning: str | None = None
    tool_calls: list[dict] | None = None  # [{"id"?, "name", "arguments": dict}]
    extra: dict | None = None  # tool_call_id, name: passed through to the template


@dataclass
class Conversation:
    messages: list[Message]
    tools: list | None


def short(value, n: int = 60) -> str:
    """A user value for an error line: its repr, cut to `n` characters.

    Examples:
        >>> short("word " * 40, 12)
        "'word word w..."
    """
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def read_content(content, say: Callable[[str], RecordError], role: str) -> tuple[str | None, str | None]:
    """(text, reasoning) of a message's content: a string, null, or a list of parts (OpenAI's
    content parts; Mistral's chunks). Text parts are joined without separator, as OpenAI
    joins them; a `{"type": "thinking", "thinking": ...}` chunk before them is an assistant
    message's reasoning (Magistral, Ministral 3 reasoning). Anything else (images, audio,
    files) is refused, naming the part: this is a text-only encode.

    Examples:
        >>> read_content([{"type": "thinking", "thinking": "r"}, {"type": "text", "text": "a"}],
        ...              RecordError, "assistant")
        ('a', 'r')
    """
    if content is None or isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise say(f"content is {type(content).__name__}, expected a string or a list of text parts")
    texts, thinking = [], None
    for k, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise say(f"content part {k} is {type(part).__name__} {short(part, 40)}, expected a string or "
                      "{'type': 'text', 'text': ...}")
        kind = part.get("type", "text")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "thinking" and isinstance(part.get("thinking"), str):
            if role != "assistant":
                raise say(f"content part {k}: a thinking chunk on a {role} message; reasoning is read on "
                          "assistant messages only")
            if texts or thinking is not None:
                raise say(f"content part {k}: a thinking chunk {'after text' if texts else 'after another'}; "
                          "llt trains an assistant turn as its reasoning, then its answer (one thinking "
                          "chunk, first)")
            thinking = part["thinking"]
        elif isinstance(kind, str) and kind not in ("text", "thinking"):
            raise say(f"content part {k} is of type {short(kind, 40)}: llt encodes text only (text and, on "
                      "assistant messages, thinking parts)")
        else:
            raise say(f"content part {k} {short(part)} is not text (a string or "
                      "{'type': 'text', 'text': ...}); llt encodes text only")
    return ("".join(texts) if texts or thinking is None else None), thinking


def _tool_call(call, c: int, say) -> dict:
    if not isinstance(call, dict):
        raise say(f"tool call {c} is {type(call).__name__}, expected an object")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise say(f"tool call {c} has no function name (expected "
                  "{'function': {'name': ..., 'arguments': ...}})")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise say(f"tool call {c} ({fn['name']}): arguments are not valid JSON: {e.msg} "
                      f"at character {e.pos} of {args[:80]!r}") from None
    if not isinstance(args, dict):
        raise say(f"tool call {c} ({fn['name']}): arguments must be a JSON object, "
                  f"got {type(args).__name__}")
    out = {"name": fn["name"], "arguments": args}
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def _message(m, j: int, say_record) -> Message:
    def say(why: str) -> RecordError:
        return say_record(f"message {j}: {why}")

    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise say(f"expected an object with a string 'role', got {short(m, 80)}")
    role = m["role"]
    if role not in ROLES:
        raise say(f"unknown role {short(role)} (known: {', '.join(ROLES)})")
    content = m.get("content")
    if role in ("tool", "ipython") and content is not None and not isinstance(content, (str, list)):
        content = json.dumps(content, ensure_ascii=False)  # a tool's structured result
    content, thinking = read_content(content, say, role)
    reasoning = next((m[k] for k in REASONING_KEYS if m.get(k) is not None), None)
    if reasoning is not None and not isinstance(reasoning, str):
        raise say(f"reasoning is {type(reasoning).__name__}, expected a string")
    if thinking is not None:
        if reasoning is not None:
            raise say("reasoning given twice: as a thinking chunk and as a field; keep one")
        reasoning = thinking
    calls = m.get("tool_calls") or None
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise say("'tool_calls' must be a list, on an assistant message")
        calls = [_tool_call(call, c, say) for c, call in enumerate(calls)]
    if content is None and (role != "assistant" or not (calls or reasoning)):
        raise say(f"a {role} message needs string 'content'")
    extra = {k: m[k] for k in ("tool_call_id", "name") if m.get(k) is not None} or None
    for k, v in (extra or {}).items():
        if not isinstance(v, str):
            raise say(f"{k!r} is {type(v).__name__} {short(v, 40)}, expected a string")
    return Message(role, content, reasoning or None, calls, extra)


def read_conversation(rec, messages_field: str, tools_field: str,
                      say_record: Callable[[str], RecordError]) -> Conversation:
    """Check one chat record and bring it to one shape; errors name the message."""
    if isinstance(rec, list):
        msgs, tools = rec, None
    elif isinstance(rec, dict):
        if messages_field not in rec:
            raise say_record(f"missing field {messages_field!r} (fields: "
                             f"{', '.join(map(repr, rec)) or 'none'})")
        msgs, tools = rec[messages_field], rec.get(tools_field)
    else:
        raise say_record(f"expected an object with field {messages_field!r}, got {type(rec).__name__}")
    if not isinstance(msgs, list):
        raise say_record(f"field {messages_field!r} is {type(msgs).__name__}, expected a list of messages")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as e:
            raise say_record(f"field {tools_field!r} is not valid JSON: {e.msg}") from None
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise say_record(f"field {tools_field!r} must be a list of JSON schemas (objects)")
    out = []
    for j, m in enumerate(msgs):
        # the common message, {role, content: str}, without the general checks (2x faster)
        if type(m) is dict and len(m) == 2 and type(m.get("content")) is str and type(m.get("role")) is str \
                and m["role"] in _ROLE_SET:
            out.append(Message(m["role"], m["content"]))
        else:
            out.append(_message(m, j, say_record))
    return Conversation(out, tools)  # [] stays []: templates tell it from None (Hermes-3 needs a list)

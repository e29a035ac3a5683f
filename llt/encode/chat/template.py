"""A chat template as the encoder uses it: compiled once, rendered directly, and fitted once
to how it wants messages.

Rendering goes through the template compiled as transformers compiles it
(`environment`: same sandbox, filters and globals as `apply_chat_template`), called directly: `apply_chat_template` re-checks and
copies the conversation on every call, which cost 3x the render itself (measured on
Qwen2.5's template, 7-message conversations), and the encoder renders each conversation
2 times per assistant turn. `tests/test_chat_templates.py` checks both give the same text.
The turn rule that uses it is `llt.encode.chat.rule`.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

from llt.encode.chat.environment import compile_template
from llt.encode.chat.messages import Message
from llt.errors import LltError


@dataclass(frozen=True)
class Style:
    """How one template wants the parts that chat data writes in several ways."""

    args_as_text: bool = False  # tool-call arguments as a JSON string (R1's template concatenates them)
    empty_content: str = "none"  # an assistant message with no text: "none" (null), "empty" ("") or "absent"
    think_tags: bool = False  # reasoning inside content as <think>..</think> (no reasoning field read)
    reasoning_chunks: bool = False  # reasoning as a {"type": "thinking"} chunk of content (Mistral)


_PROBE_TOOL = {"type": "function", "function": {
    "name": "probe_fn", "description": "probe",
    "parameters": {"type": "object", "properties": {"probe_key": {"type": "string", "description": "k"}},
                   "required": ["probe_key"]}}}


def load_template_source(tok, path: str | None) -> str:
    """The template text: a file given with --chat_template, else the tokenizer's own."""
    if path:
        try:
            return open(path, encoding="utf-8").read()
        except OSError as e:
            raise LltError(f"--chat_template {path}: cannot read it: {e.strerror}") from None
    source = getattr(tok, "chat_template", None)
    if isinstance(source, dict):  # several named templates: the default one, as HF picks
        source = source.get("default") or next(iter(source.values()))
    if not source:
        raise LltError("the tokenizer has no chat template; pass one with --chat_template FILE")
    return source


class ChatTemplate:
    """Render conversations with one template and fixed keyword arguments."""

    def __init__(self, tok, source: str, kwargs: dict | None = None, date: str | None = None):
        self.tok, self.source = tok, source
        try:
            self.compiled = compile_template(source)
        except Exception as e:  # noqa: BLE001 - a template is user input
            raise LltError(f"the chat template does not compile: {type(e).__name__}: {e}") from None
        day = datetime.date.fromisoformat(date) if date else datetime.date.today()
        self.date = day.isoformat()
        noon = datetime.datetime.combine(day, datetime.time(12))

        def strftime_now(fmt: str) -> str:  # date-stamped templates (Llama 3.2, gpt-oss)
            return noon.strftime(fmt)

        self.context = {**tok.special_tokens_map, **(kwargs or {}), "strftime_now": strftime_now}
        # Template.render copies the globals and the variables into a new context on every
        # call (a third of a render's time here); a prepared dict passed as a shared context
        # gives the template the same names, and its root function the same output.
        self._base = {**self.compiled.globals, **self.context, "documents": None}
        self.style = self._fit()

    # ------------------------------------------------------------------ rendering
    def render(self, messages: list[dict], tools: list | None, gen: bool) -> str:
        names = dict(self._base)
        names.update(messages=messages, tools=tools, add_generation_prompt=gen)
        return "".join(self.compiled.root_render_func(self.compiled.new_context(names, shared=True)))

    def to_dicts(self, messages: list[Message], style: Style | None = None) -> list[dict]:
        """Messages as this template reads them (see `Style`)."""
        style = style or self.style
        out = []
        for m in messages:
            d = {"role": m.role}
            content = m.content
            if m.reasoning and style.think_tags:
                content = f"<think>\n{m.reasoning}\n</think>\n\n{content or ''}"
            elif m.reasoning and style.reasoning_chunks:
                content = [{"type": "thinking", "thinking": m.reasoning},
                           *([{"type": "text", "text": content}] if content else [])]
            if content is not None:
                d["content"] = content
            elif not m.tool_calls:
                d["content"] = ""
            elif style.empty_content != "absent":
                d["content"] = None if style.empty_content == "none" else ""
            if m.reasoning and not (style.think_tags or style.reasoning_chunks):
                d["reasoning_content"] = d["thinking"] = m.reasoning  # as transformers aliases it
            if m.tool_calls:
                d["tool_calls"] = [self._call(c, style) for c in m.tool_calls]
            if m.extra:
                d.update(m.extra)
            out.append(d)
        return out

    @staticmethod
    def _call(call: dict, style: Style) -> dict:
        args = json.dumps(call["arguments"], ensure_ascii=False) if style.args_as_text else call["arguments"]
        fn = {"type": "function", "function": {"name": call["name"], "arguments": args}}
        return {**({"id": call["id"]} if "id" in call else {}), **fn}

    # ------------------------------------------------------------------ fitting
    def _fit(self) -> Style:
        """Decide `Style` with probe conversations, once per template."""
        think_tags, chunks = self._fit_reasoning()
        call = Message("assistant", None, None, [{"id": "probe0001", "name": "probe_fn",
                                                  "arguments": {"probe_key": "probe_value"}}])
        probe = [Message("user", "probe question"), call]
        for as_text in (False, True):
            for empty in ("none", "empty", "absent"):
                style = Style(as_text, empty, think_tags, chunks)
                text = self._try(probe, style, [_PROBE_TOOL])
                if "probe_fn" in text and ('"probe_key": "probe_value"' in text
                                           or '"probe_key":"probe_value"' in text):
                    return style
        return Style(False, "none", think_tags, chunks)  # no tool calls here: records with some fail loudly

    def _fit_reasoning(self) -> tuple[bool, bool]:
        """Where reasoning goes when the template reads no reasoning field: (inside content
        as <think> tags: DeepSeek-R1 style templates; as a thinking chunk of a content
        list: Mistral's reasoning templates, which render it `[THINK]...[/THINK]`)."""
        probe = [Message("user", "probe question"), Message("assistant", "probe answer", "probe_reasoning")]
        if "probe_reasoning" in self._try(probe, Style(), None):
            return False, False
        if "</think>" in self.source and "probe_reasoning" in self._try(probe, Style(think_tags=True), None):
            return True, False
        text = self._try(probe, Style(reasoning_chunks=True), None)
        # a template that prints the list itself shows its keys: that is not reading chunks
        return False, "probe_reasoning" in text and "probe answer" in text and "'thinking'" not in text

    def _try(self, probe: list[Message], style: Style, tools) -> str:
        try:
            return self.render(self.to_dicts(probe, style), tools, False)
        except Exception:  # noqa: BLE001 - a probe the template refuses: the caller tries another
            return ""

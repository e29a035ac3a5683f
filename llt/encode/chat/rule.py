"""The turn rule: which tokens of a conversation are trained, and why (docs/chat.md).

For each assistant turn i of a conversation, the chat template gives two texts:

* the **prompt**: the conversation before turn i, rendered with the generation prompt.
  This is exactly what the model sees at inference when it writes turn i;
* the **turn**: what the model generates after that prompt, which is the conversation
  through turn i rendered with i last, after the prompt, up to its last non-space
  character (the end-of-turn token; the newline after it is not generated).

The prompt is tokenized whole and the turn on its own, as at inference, and only the turn's
tokens are trained. Turns share one sample while each prompt continues the sample so far
(templates that render a conversation prefix by prefix: one sample per conversation).
Where a template renders history differently from the turn being generated (Qwen3 drops
earlier reasoning, gpt-oss ends earlier turns with `<|end|>` instead of `<|return|>`,
Mistral moves the tools and system prompt before the last user turn), the turn starts a
new sample with the conversation so far, as history, untrained (`first_turn` False: the
encoder counts the tokens this repeats). `--train_turns last` trains only the last turn.

A turn whose content, reasoning or tool calls do not appear in its text (a template that
drops them) is an error naming the record and message, or with `--unrendered skip` a
counted skip of the conversation; never a sample trained without it.

Where the prompt is not a prefix of the render (DeepSeek-R1's prompt ends `<think>\\n`,
which the rendered turn lacks), the turn is found from the end of the render
(`generated_text`). That is all of the rule; the rest of `llt.encode.chat` makes it fast
(`plans`, `joins`) or feeds it (`messages`, `template`, `environment`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from llt.encode.chat.messages import Conversation, Message
from llt.errors import LltError


@dataclass
class ChatOptions:
    train_turns: str = "all"  # "all" | "last"
    unrendered: str = "error"  # "error" | "skip"


@dataclass
class ChatSample:
    """A sample as text segments before tokenizing; segment k is trained when `trained[k]`."""

    texts: list[str] = field(default_factory=list)
    trained: list[bool] = field(default_factory=list)
    first_turn: bool = True  # False: it repeats history another sample of the record holds


class TurnError(LltError):
    """The turn rule cannot place an assistant turn in what the template renders."""


def turn_samples(tpl, conv: Conversation, options: ChatOptions, say, start: int = 0) -> list[ChatSample] | None:
    """The rule itself, two renders per assistant turn: the conversation's samples, or None
    for a counted skip. `tpl`: a `template.ChatTemplate`; `say(why)` builds the error that
    names the record; only assistant turns from message `start` on are trained (a
    preference pair's completion after its prompt)."""
    dicts = tpl.to_dicts(conv.messages)
    turns = [i for i, m in enumerate(conv.messages)
             if i >= start and m.role == "assistant" and (m.content or m.reasoning or m.tool_calls)]
    if options.train_turns == "last":
        turns = turns[-1:]
    out: list[ChatSample] = []
    so_far = None  # the text of the current sample
    for i in turns:
        try:
            prompt = generation_prompt(tpl, dicts[:i], conv.tools, dicts[i])
            turn = generated_text(tpl, prompt, tpl.render(dicts[: i + 1], conv.tools, False),
                                  lambda i=i: tpl.render(dicts[:i], conv.tools, False) if i else "",
                                  first_part(conv.messages[i]))
        except TurnError as e:
            raise say(f"message {i}: {e}") from None
        except Exception as e:  # noqa: BLE001 - jinja errors come from user data
            raise say(f"the chat template failed on message {i}: {type(e).__name__}: {e}") from None
        missing = missing_parts(conv.messages[i], turn)
        if missing:
            if options.unrendered == "skip":
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


def first_part(m: Message) -> str:
    """What an assistant message's turn starts with: its reasoning, content or first tool name."""
    return m.reasoning or m.content or (m.tool_calls[0]["name"] if m.tool_calls else "")


def generation_prompt(tpl, dicts: list[dict], tools: list | None, turn: dict) -> str:
    """The generation-time prompt before `turn` (the conversation `dicts` before it)."""
    if dicts:
        return tpl.render(dicts, tools, True)
    try:  # an assistant turn first: many templates cannot render an empty conversation
        return tpl.render([], tools, True)
    except Exception:  # noqa: BLE001
        full = tpl.render([turn], tools, False)
        key = turn.get("content") or turn.get("reasoning_content") or ""
        pos = full.find(key) if key else -1
        return full[:pos] if pos > 0 else ""


def generated_text(tpl, prompt: str, render: str, history, first: str) -> str:
    """The text the model generates after `prompt`, from the `render` of its turn.

    When `prompt` is not a prefix of `render` (the template renders history differently
    once the turn follows), the turn is found from the end of `render`, where it is: the
    last place before the turn's `first` part (its reasoning, content or first tool name)
    where the generation prompt stands (`prompt` after `history()`, the conversation before
    the turn rendered without it), or its longest token-aligned head. Without a generation
    prompt (Mistral: the turn follows [/INST]) the prompt's last characters stand in for it.
    This covers DeepSeek-R1 (prompt `<｜Assistant｜><think>\\n`, turn `<｜Assistant｜>answer`),
    gpt-oss (tool-call reasoning leaves the history once a final answer follows) and
    Hermes-3 (a last tool result renders without the newline it has once a turn follows).
    """
    if render.startswith(prompt):
        return render[len(prompt):].rstrip()
    end = render.rfind(first.strip()) if first.strip() else -1
    end = end if end >= 0 else len(render)
    before = history()
    if prompt.startswith(before) and len(prompt) > len(before):
        gen = prompt[len(before):]
        enc = tpl.tok.backend_tokenizer.encode(gen, add_special_tokens=False)
        heads = [gen[:cut] for cut in sorted({hi for _, hi in enc.offsets if hi > 0}, reverse=True)]
    else:
        heads = [prompt[-n:] for n in (256, 128, 64, 32, 16, 8)]
    for head in heads:
        pos = render.rfind(head, 0, end)
        if pos >= 0:
            return render[pos + len(head):].rstrip()
    raise TurnError("the chat template renders the conversation before this turn differently "
                    "once the turn follows, and the end of its generation-time prompt "
                    f"({prompt[-40:]!r}) cannot be found in the rendered turn "
                    f"({render[max(0, end - 80):end + 40]!r})")


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

"""Published chat templates of current model families, with a tiny tokenizer for each and
conversations that exercise what each template supports.

The templates are the files in tests/fixtures/chat_templates (see its README for where
each comes from). Each family's tokenizer is a byte-level BPE trained here on the rendered
conversations, with that family's control tokens added as special tokens (and, where the
real tokenizer has them, `<think>`/`<tool_call>` as plain added tokens), so token
boundaries fall where they do in the real tokenizer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "description": "celsius or fahrenheit"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"}}, "required": ["city"]}}}


def call(name: str, args, cid: str, as_string: bool = False) -> dict:
    """An OpenAI-style tool call; `as_string` gives the arguments as a JSON string."""
    return {"id": cid, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args) if as_string else args}}


def agent_conversation(reasoning: bool, parallel: bool, system: str = "system") -> dict:
    """System prompt, a tool round (one or two calls, object and string arguments, two
    results), a second tool round, an answer, a follow-up question and its answer."""
    r = (lambda text: {"reasoning_content": text}) if reasoning else (lambda text: {})
    first = [call("get_weather", {"city": "Paris", "unit": "celsius"}, "call00001")]
    results = [{"role": "tool", "tool_call_id": "call00001", "name": "get_weather",
                "content": '{"temp": 18, "sky": "clear"}'}]
    if parallel:
        first.append(call("get_time", {"city": "Paris"}, "call00002", as_string=True))
        results.append({"role": "tool", "tool_call_id": "call00002", "name": "get_time",
                        "content": "14:05"})
    msgs = [
        {"role": system, "content": "You are a travel assistant. Be brief."},
        {"role": "user", "content": "Is it a good afternoon for a walk in Paris? And Rome?"},
        {"role": "assistant", "content": None, "tool_calls": first, **r("I need the weather in Paris.")},
        *results,
        {"role": "assistant", "content": None, **r("Paris is fine. Now Rome."),
         "tool_calls": [call("get_weather", {"city": "Rome"}, "call00003", as_string=True)]},
        {"role": "tool", "tool_call_id": "call00003", "name": "get_weather", "content": '{"temp": 24, "sky": "rain"}'},
        {"role": "assistant", "content": "Paris: yes, 18 C and clear. Rome: take an umbrella, it rains.",
         **r("Paris clear, Rome rain.")},
        {"role": "user", "content": "Thanks! Which one is warmer?"},
        {"role": "assistant", "content": "Rome, at 24 C against 18 C in Paris.", **r("24 > 18.")},
    ]
    return {"messages": msgs, "tools": [WEATHER, CLOCK]}


def plain_conversation(reasoning: bool) -> dict:
    r = (lambda text: {"reasoning": text}) if reasoning else (lambda text: {})  # an alias
    return {"messages": [
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": [{"type": "text", "text": "2 plus 3 is 5."}], **r("Add them.")},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "20.", **r("5 times 4.")},
    ]}


def as_chunks(conv: dict) -> dict:
    """The conversation with each reasoning as a thinking chunk first in `content`, the way
    data for Mistral's reasoning models (and OpenAI-style content parts) comes."""
    conv = copy.deepcopy(conv)
    for m in conv["messages"]:
        for key in ("reasoning_content", "reasoning", "thinking"):
            if key in m:
                text = m.pop(key)
                answer = m["content"] if isinstance(m["content"], list) else (
                    [{"type": "text", "text": m["content"]}] if m["content"] else [])
                m["content"] = [{"type": "thinking", "thinking": text}, *answer]
    return conv


def single_call(conv: dict) -> dict:
    """The conversation with each tool round cut to one call (templates that render one)."""
    conv = copy.deepcopy(conv)
    out = []
    for m in conv["messages"]:
        if m.get("tool_calls"):
            m["tool_calls"] = m["tool_calls"][:1]
        if m["role"] == "tool" and m.get("tool_call_id") == "call00002":
            continue
        out.append(m)
    conv["messages"] = out
    return conv


def one_round(conv: dict) -> dict:
    """The conversation with its second tool round left out."""
    conv = copy.deepcopy(conv)
    msgs = conv["messages"]
    second = [i for i, m in enumerate(msgs) if m.get("tool_calls")][1]
    conv["messages"] = msgs[:second] + msgs[second + 2:]
    return conv


@dataclass
class Family:
    template: str
    specials: list[str]
    bos: str | None
    eos: str
    records: list[dict]
    added: list[str] = field(default_factory=list)  # plain (not special) added tokens
    kwargs: dict | None = None
    one_sample: bool = True  # renders conversations prefix by prefix
    style: tuple = (False, "none", False, False)  # chat_template.Style the encoder should fit
    header: str = ""  # the assistant header, where a turn's prompt is not a prefix of its render

    @property
    def source(self) -> str:
        return (TEMPLATES / self.template).read_text()


CHATML = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
LLAMA = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
         "<|python_tag|>"]
R1 = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
      "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
      "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
      "<｜tool▁output▁end｜>"]
HARMONY = ["<|startoftext|>", "<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>",
           "<|call|>", "<|constrain|>"]
MISTRAL = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
           "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
MINISTRAL = ["<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CALLS]", "[ARGS]",
             "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[THINK]", "[/THINK]",
             "[IMG]"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]


def families() -> dict[str, Family]:
    agent_r = agent_conversation(reasoning=True, parallel=True)
    agent = agent_conversation(reasoning=False, parallel=True)
    return {
        "qwen3": Family("qwen3.jinja", CHATML, None, "<|im_end|>",
                        [agent_r, plain_conversation(True), plain_conversation(False)], QWEN_ADDED,
                        one_sample=False),
        "qwen2.5-tools": Family("qwen2_5.jinja", CHATML, None, "<|im_end|>",
                                [agent, plain_conversation(False)], QWEN_ADDED),
        "hermes3-tools": Family("hermes3_tool_use.jinja", CHATML, "<|begin_of_text|>", "<|im_end|>",
                                [agent, {**plain_conversation(False), "tools": [WEATHER]}],
                                QWEN_ADDED + ["<|begin_of_text|>"], one_sample=False,
                                header="<|im_start|>assistant\n"),
        "llama3.1-tools": Family("llama3_1.jinja", LLAMA, "<|begin_of_text|>", "<|eot_id|>",
                                 [single_call(agent), plain_conversation(False)]),
        "mistral-tools": Family("mistral_nemo.jinja", MISTRAL, "<s>", "</s>",
                                [agent, plain_conversation(False)], one_sample=False, header="[/INST]"),
        "gpt-oss": Family("gpt_oss.jinja", HARMONY, "<|startoftext|>", "<|return|>",
                          [single_call(agent_conversation(True, True, system="developer")),
                           plain_conversation(True)], one_sample=False, style=(False, "empty", False, False),
                          header="<|start|>assistant"),
        # R1's template renders one tool round (it never resets its first-call flag, so a
        # second round comes out inside the first): one round here, the second is refused
        "deepseek-r1": Family("deepseek_r1.jinja", R1, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                              [one_round(agent), plain_conversation(False)], ["<think>", "</think>"],
                              one_sample=False, style=(True, "none", False, False), header="<｜Assistant｜>"),
        # Ministral 3 reasoning (and Magistral): reasoning as a thinking chunk, [THINK]...[/THINK]
        "ministral3-reasoning": Family("ministral3_reasoning.jinja", MINISTRAL, "<s>", "</s>",
                                       [as_chunks(agent_r), as_chunks(plain_conversation(True)),
                                        plain_conversation(False)], style=(False, "empty", False, True)),
    }


def build_family_tokenizer(fam: Family, out_dir: Path):
    """A byte-level BPE with the family's control tokens and template, saved to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.dumps(r) for r in fam.records] + [fam.source]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=fam.specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=fam.eos, bos_token=fam.bos)
    if fam.added:
        tok.add_tokens(fam.added)
    tok.chat_template = fam.source
    tok.save_pretrained(str(out_dir))
    return PreTrainedTokenizerFast.from_pretrained(str(out_dir))

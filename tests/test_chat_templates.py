"""Chat encoding with the published templates of current model families: every trained
turn is token for token what the model generates at inference after the prompt it gets,
nothing else is trained, and a template that drops a part of a message is never silent."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
from chat_families import (WEATHER, Family, agent_conversation, build_family_tokenizer, families,
                           plain_conversation)
from conftest import encode, read_corpus

from llt.encode.chat.template import ChatTemplate
from llt.encode.chat.messages import RecordError, read_conversation
from llt.errors import LltError
from llt.toy import write_jsonl

FAMILIES = families()
DATE = "2026-03-14"


@pytest.fixture(scope="module")
def family_toks(tmp_path_factory):
    out = {}
    for name, fam in FAMILIES.items():
        d = tmp_path_factory.mktemp("fam") / name
        out[name] = (d, build_family_tokenizer(fam, d))
    return out


def trained_runs(sample) -> list[tuple[list[int], list[int]]]:
    """(tokens before the run, the run) for each trained run of one sample."""
    toks, mask, _ = sample
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(toks[:lo], toks[lo:hi]) for lo, hi in zip(edges[::2], edges[1::2])]


def reference_turns(fam: Family, tok, rec: dict) -> list[tuple[list[int], list[int]]]:
    """What inference does, through transformers' own renderer and the tokenizer's own
    call: (ids of the generation prompt, ids of the turn's generated text) per turn."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tpl = ChatTemplate(tok, fam.source, fam.kwargs, DATE)
    conv = read_conversation(rec, "messages", "tools", RecordError)
    dicts = tpl.to_dicts(conv.messages)
    today = datetime.date.today().isoformat()

    def render(msgs, gen):  # transformers writes today's date where the template asks for it
        return render_jinja_template([msgs], tools=conv.tools, chat_template=fam.source,
                                     add_generation_prompt=gen, **tok.special_tokens_map,
                                     **(fam.kwargs or {}))[0][0].replace(today, DATE)

    out = []
    for i, m in enumerate(dicts):
        if m["role"] != "assistant":
            continue
        prompt, full = render(dicts[:i], True), render(dicts[: i + 1], False)
        if full.startswith(prompt):
            turn = full[len(prompt):].rstrip()
        else:  # DeepSeek-R1: the prompt ends "<｜Assistant｜><think>\n", the turn renders without
            # it; Hermes-3: a last tool result lacks the newline it gets once a turn follows
            # gpt-oss: tool-call reasoning is dropped from history once a final answer follows.
            # The turn is what follows the family's assistant header before its first part.
            msg = conv.messages[i]
            first = msg.reasoning or msg.content or msg.tool_calls[0]["name"]
            head = full.rindex(fam.header, 0, full.rindex(first.strip()))
            turn = full[head + len(fam.header):].rstrip()
        out.append((tok(prompt, add_special_tokens=False)["input_ids"],
                    tok(turn, add_special_tokens=False)["input_ids"]))
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_trained_tokens_are_what_the_model_generates_at_inference(tmp_path, family_toks, name):
    fam = FAMILIES[name]
    tok_dir, tok = family_toks[name]
    src = write_jsonl(tmp_path / "chat.jsonl", fam.records)
    manifest, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", max_length=100_000,
                              chat_date=DATE)
    assert tuple(manifest["chat"]["style"].values()) == fam.style
    got = [run for sample in read_corpus(corpus) for run in trained_runs(sample)]
    want = [t for rec in fam.records for t in reference_turns(fam, tok, rec)]
    assert len(got) == len(want)  # one trained run per assistant turn, nothing else trained
    for (ctx, run), (want_ctx, want_run) in zip(got, want):
        assert run == want_run, (tok.decode(run), tok.decode(want_run))
        assert ctx == want_ctx, (tok.decode(ctx[-30:]), tok.decode(want_ctx[-30:]))
    stats = manifest["stats"]
    assert stats["trained_tokens"] == sum(len(r) for _, r in got)
    assert (stats["turn_samples"] == 0) == fam.one_sample
    n_turns = sum(1 for r in fam.records for m in r["messages"] if m["role"] == "assistant")
    assert stats["samples"] == len(fam.records) + stats["turn_samples"] <= n_turns
    # the repeated history is counted: every sample's untrained tokens, less one per conversation
    assert stats["extra_prompt_tokens"] > 0 or fam.one_sample


def decoded_turns(name, family_toks, tmp_path, records, **kw) -> list[str]:
    tok_dir, tok = family_toks[name]
    src = write_jsonl(tmp_path / "chat.jsonl", records)
    _, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", max_length=100_000,
                       chat_date=DATE, **kw)
    return [tok.decode(run) for s in read_corpus(corpus) for _, run in trained_runs(s)]


def test_gpt_oss_trains_the_analysis_channel_and_ends_the_last_turn_with_return(tmp_path, family_toks):
    turns = decoded_turns("gpt-oss", family_toks, tmp_path, [plain_conversation(True)])
    assert turns == ["<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant<|channel|>final"
                     "<|message|>2 plus 3 is 5.<|return|>",
                     "<|channel|>analysis<|message|>5 times 4.<|end|><|start|>assistant<|channel|>final"
                     "<|message|>20.<|return|>"]


def test_qwen3_tool_call_turns_keep_their_reasoning_and_calls(tmp_path, family_toks):
    conv = agent_conversation(reasoning=True, parallel=True)
    turns = decoded_turns("qwen3", family_toks, tmp_path, [conv])
    assert turns[0] == ("<think>\nI need the weather in Paris.\n</think>\n\n<tool_call>\n"
                        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
                        "</tool_call>\n<tool_call>\n"
                        '{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>')
    assert turns[-1] == "<think>\n24 > 18.\n</think>\n\nRome, at 24 C against 18 C in Paris.<|im_end|>"


def test_qwen3_enable_thinking_false_goes_to_the_template(tmp_path, family_toks):
    tok_dir, tok = family_toks["qwen3"]
    src = write_jsonl(tmp_path / "chat.jsonl", [plain_conversation(False)])
    _, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", chat_date=DATE,
                       chat_template_kwargs='{"enable_thinking": false}')
    (ctx, run), = trained_runs(read_corpus(corpus)[-1])[-1:]
    assert tok.decode(ctx).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.decode(run) == "20.<|im_end|>"


def test_deepseek_r1_prompt_ends_in_think_and_the_answer_is_trained_after_it(tmp_path, family_toks):
    tok_dir, tok = family_toks["deepseek-r1"]
    src = write_jsonl(tmp_path / "chat.jsonl", [plain_conversation(False)])
    _, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", chat_date=DATE)
    samples = read_corpus(corpus)
    assert len(samples) == 2  # history is rendered as the template renders it: one sample a turn
    (ctx, run), = trained_runs(samples[1])
    assert tok.decode(ctx).endswith("<｜User｜>And times 4?<｜Assistant｜><think>\n")
    assert tok.decode(run) == "20.<｜end▁of▁sentence｜>"


def test_reasoning_a_template_drops_is_an_error_naming_the_message_or_a_counted_skip(tmp_path, family_toks):
    recs = [plain_conversation(False), plain_conversation(True)]
    with pytest.raises(LltError, match=r"chat.jsonl: line 2: message 1: its reasoning does not appear"):
        decoded_turns("deepseek-r1", family_toks, tmp_path, recs)
    tok_dir, _ = family_toks["deepseek-r1"]
    src = write_jsonl(tmp_path / "c2.jsonl", recs)
    manifest, _ = encode(tmp_path, tok_dir, [src], encode_type="chat", corpus_name="skip",
                         unrendered="skip")
    assert manifest["stats"]["skipped_unrendered"] == 1 and manifest["stats"]["records"] == 2


def test_a_template_that_keeps_reasoning_is_used_with_chat_template_and_recorded(tmp_path, family_toks):
    from chat_families import TEMPLATES

    keep = TEMPLATES / "deepseek_r1_keep_reasoning.jinja"
    tok_dir, tok = family_toks["deepseek-r1"]
    src = write_jsonl(tmp_path / "chat.jsonl", [plain_conversation(True)])
    manifest, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", chat_template=str(keep),
                              chat_date=DATE)
    assert manifest["chat"]["template"] == keep.read_text()
    assert manifest["chat"]["style"]["think_tags"] is True  # reasoning goes in <think> tags
    turns = [tok.decode(r) for s in read_corpus(corpus) for _, r in trained_runs(s)]
    assert turns[-1] == "5 times 4.\n</think>\n\n20.<｜end▁of▁sentence｜>"


def test_tool_calls_a_template_drops_are_an_error(tmp_path, family_toks):
    # gpt-oss renders one call per message: a second parallel call would be lost
    conv = agent_conversation(reasoning=False, parallel=True, system="developer")
    with pytest.raises(LltError, match=r"line 1: message 2: its tool call 'get_time' does not appear"):
        decoded_turns("gpt-oss", family_toks, tmp_path, [conv])


def test_qwen25_tool_call_is_trained(tmp_path, family_toks):
    # the seed's encoder found assistant turns by their content, so a tool call (no content)
    # was never trained
    turns = decoded_turns("qwen2.5-tools", family_toks, tmp_path, [agent_conversation(False, True)])
    assert turns[1] == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
                        "</tool_call><|im_end|>")


def test_dated_templates_write_the_chat_date(tmp_path, family_toks):
    tok_dir, tok = family_toks["gpt-oss"]
    src = write_jsonl(tmp_path / "chat.jsonl", [plain_conversation(False)])
    manifest, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", chat_date="2025-01-02")
    assert "Current date: 2025-01-02" in tok.decode(read_corpus(corpus)[0][0])
    assert manifest["chat"]["date"] == "2025-01-02"


def test_train_turns_last_is_one_sample_a_conversation(tmp_path, family_toks):
    tok_dir, tok = family_toks["mistral-tools"]
    conv = agent_conversation(False, True)
    src = write_jsonl(tmp_path / "chat.jsonl", [conv])
    manifest, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", train_turns="last")
    (sample,) = read_corpus(corpus)
    ((_, run),) = trained_runs(sample)
    assert tok.decode(run) == "Rome, at 24 C against 18 C in Paris.</s>"
    assert manifest["stats"]["turn_samples"] == 0


@pytest.mark.parametrize("bad, why", [
    ({"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]},
     r"message 1: tool call 0 \(f\): arguments are not valid JSON"),
    ({"role": "assistant", "content": 5}, r"message 1: content is int"),
    ({"role": "robot", "content": "x"}, r"message 1: unknown role 'robot'"),
    ({"role": "assistant", "content": None}, r"message 1: a assistant message needs string 'content'"),
])
def test_malformed_messages_are_named(tmp_path, family_toks, bad, why):
    with pytest.raises(LltError, match=why):
        decoded_turns("qwen3", family_toks, tmp_path,
                      [{"messages": [{"role": "user", "content": "hi"}, bad]}])


def test_our_render_equals_apply_chat_template(family_toks):
    """Rendered in llt's own jinja environment, with the raw tokenizer the encoder loads."""
    from llt.tokenizer_loader import RawTokenizer, load_tokenizer

    for name, fam in FAMILIES.items():
        d, tok = family_toks[name]
        raw = load_tokenizer(d)
        assert isinstance(raw, RawTokenizer)
        tpl = ChatTemplate(raw, fam.source, None, datetime.date.today().isoformat())
        rec = {**plain_conversation(False), "tools": [WEATHER]}
        conv = read_conversation(rec, "messages", "tools", RecordError)
        dicts = tpl.to_dicts(conv.messages)
        for gen in (True, False):
            ours = tpl.render(dicts, conv.tools, gen)
            assert ours == tok.apply_chat_template(dicts, tools=conv.tools, tokenize=False,
                                                   add_generation_prompt=gen), name


def test_jinja_environment_matches_transformers():
    """Same settings, filters, tests and globals as transformers' chat-template environment,
    so a template that works with apply_chat_template works here (and one that fails, fails)."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from llt.encode.chat.environment import compile_template, environment

    theirs, ours = _compile_jinja_template("x").environment, environment()
    for attr in ("trim_blocks", "lstrip_blocks", "keep_trailing_newline"):
        assert getattr(ours, attr) == getattr(theirs, attr)
    assert set(ours.filters) == set(theirs.filters) and set(ours.tests) == set(theirs.tests)
    assert set(ours.globals) == set(theirs.globals)
    assert {type(e).__name__ for e in ours.extensions.values()} - {"GenerationTag"} == \
        {type(e).__name__ for e in theirs.extensions.values()} - {"AssistantTracker"}
    src = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
           "{% generation %}{{ m.content | tojson }}{% endgeneration %}{% set ns.n = ns.n + 1 %}"
           "{% endfor %}{{ ns.n }}{{ dict(a=1) | tojson }}")
    msgs = [{"content": "<b>é</b>"}] * 3
    assert compile_template(src).render(messages=msgs) == _compile_jinja_template(src).render(messages=msgs)
    assert compile_template(src).render(messages=msgs) == '"<b>é</b>""<b>é</b>"2{"a": 1}'
    for bad in ("{{ raise_exception('no system role') }}", "{% set ns = namespace(_x=1) %}",
                "{{ ''.__class__.__mro__ }}", "{% set x = messages.append(1) %}"):
        for env in (compile_template, _compile_jinja_template):
            with pytest.raises((jinja2.TemplateError, jinja2.exceptions.SecurityError)):
                env(bad).render(messages=[])


def test_deepseek_r1_second_tool_round_is_refused_with_the_reason(tmp_path, family_toks):
    with pytest.raises(LltError, match=r"line 1: message 5: the chat template renders the conversation "
                                       r"before this turn differently"):
        decoded_turns("deepseek-r1", family_toks, tmp_path, [agent_conversation(False, True)])


def test_shape_plans_give_the_turn_rules_samples_and_fall_back_when_a_template_edits_text(family_toks):
    from llt.encode.chat.encoder import ChatEncoder
    from llt.encode.chat.rule import ChatOptions, turn_samples

    # Llama 3.1 trims every message: a text with edge spaces renders unlike the plan's
    # placeholder, so that record takes the rule itself (and still comes out right)
    for name in ("qwen3", "llama3.1-tools", "gpt-oss", "deepseek-r1", "mistral-tools"):
        fam, (_, tok) = FAMILIES[name], family_toks[name]
        recs = [plain_conversation(True), plain_conversation(False),
                {"messages": [{"role": "user", "content": "  padded  "},
                              {"role": "assistant", "content": " 20. \n"}]}]
        fast = ChatEncoder(ChatTemplate(tok, fam.source, None, DATE), ChatOptions())
        exact = ChatEncoder(ChatTemplate(tok, fam.source, None, DATE), ChatOptions())
        for rec in recs:
            conv = read_conversation(rec, "messages", "tools", RecordError)
            try:
                want = turn_samples(exact.template, conv, exact.options, RecordError)
            except RecordError as e:  # a template that drops reasoning: the plan path fails alike
                with pytest.raises(RecordError, match=str(e)[:40]):
                    fast.samples(conv, RecordError)
                continue
            assert fast.samples(conv, RecordError) == want, name
        assert fast.planned >= 1, name
    assert fast.exact >= 1  # mistral renders " 20. \n" verbatim; llama trims: see below
    llama = ChatEncoder(ChatTemplate(family_toks["llama3.1-tools"][1], FAMILIES["llama3.1-tools"].source,
                                     None, DATE), ChatOptions())
    llama.samples(read_conversation(recs[2], "messages", "tools", RecordError), RecordError)
    assert llama.exact == 1 and llama.planned == 0


@pytest.mark.parametrize("name", list(FAMILIES))
def test_inspect_check_reports_no_difference_and_finds_the_samples(tmp_path, family_toks, capsys, name):
    from llt.cli import main as llt

    fam = FAMILIES[name]
    tok_dir, _ = family_toks[name]
    src = write_jsonl(tmp_path / "chat.jsonl", fam.records)
    _, corpus = encode(tmp_path, tok_dir, [src], encode_type="chat", merge_data=True, max_length=4096)
    assert llt(["inspect", str(corpus), "--check"]) == 0
    out = capsys.readouterr().out
    assert "0 difference(s)" in out and "the corpus was written with other settings" not in out
    assert f"of {len(fam.records)} records against" in out  # the records read, not the -n asked for
    if name != "gpt-oss":
        return
    # a corpus encoded with other settings (last turn only) is found out
    _, other = encode(tmp_path, tok_dir, [src], encode_type="chat", corpus_name="last", train_turns="last")
    manifest = json.loads((other / "summary.json").read_text())
    manifest["chat"]["train_turns"] = "all"  # as if the summary lied about how it was encoded
    (other / "summary.json").write_text(json.dumps(manifest))
    llt(["inspect", str(other), "--check"])
    assert "the corpus was written with other settings or code" in capsys.readouterr().out


def test_a_template_error_names_the_record_and_message(tmp_path, family_toks):
    # Hermes-3's tool-use template iterates `tools`: a record without them cannot render
    with pytest.raises(LltError, match=r"line 1: the chat template failed on message 1: TypeError"):
        decoded_turns("hermes3-tools", family_toks, tmp_path, [plain_conversation(False)])
    # an empty list is a list: the template renders it
    assert decoded_turns("hermes3-tools", family_toks, tmp_path, [{**plain_conversation(False), "tools": []}])


def test_thinking_chunks_train_as_the_reasoning_field_does(tmp_path, family_toks):
    """The same conversation with reasoning as a field or as a thinking chunk trains the
    same tokens under a template that reads the field (Qwen3)."""
    from chat_families import as_chunks

    rec = agent_conversation(reasoning=True, parallel=True)
    field = decoded_turns("qwen3", family_toks, tmp_path / "a", [rec])
    chunks = decoded_turns("qwen3", family_toks, tmp_path / "b", [as_chunks(rec)])
    assert chunks == field and "I need the weather in Paris." in chunks[0]


def test_thinking_chunks_a_template_drops_are_an_error_naming_the_message(tmp_path, family_toks):
    from chat_families import as_chunks

    with pytest.raises(LltError, match=r"chat.jsonl: line 1: message 1: its reasoning does not appear"):
        decoded_turns("mistral-tools", family_toks, tmp_path, [as_chunks(plain_conversation(True))])


@pytest.mark.parametrize("part, why", [
    ({"type": "image_url", "image_url": {"url": "http://x/cat.png"}}, r"message 0: content part 1 is of type "
                                                                       r"'image_url': llt encodes text only"),
    ({"type": "input_audio", "input_audio": {"data": "..."}}, r"message 0: content part 1 is of type 'input_audio'"),
    ({"type": "file", "file": {"file_id": "f"}}, r"message 0: content part 1 is of type 'file'"),
    ({"type": "thinking", "thinking": "hmm"}, r"message 0: content part 1: a thinking chunk on a user message"),
])
def test_non_text_parts_are_refused_naming_record_message_and_part(tmp_path, family_toks, part, why):
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]},
                        {"role": "assistant", "content": "A cat."}]}
    with pytest.raises(LltError, match=r"chat.jsonl: line 1: " + why):
        decoded_turns("ministral3-reasoning", family_toks, tmp_path, [rec])


@pytest.mark.parametrize("content, why", [
    ([{"type": "text", "text": "a"}, {"type": "thinking", "thinking": "r"}], "a thinking chunk after text"),
    ([{"type": "thinking", "thinking": "r"}, {"type": "thinking", "thinking": "s"}], "a thinking chunk after another"),
])
def test_thinking_chunks_that_cannot_be_trained_as_generated_are_named(tmp_path, family_toks, content, why):
    rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]}
    with pytest.raises(LltError, match=rf"chat.jsonl: line 1: message 1: content part 1: {why}"):
        decoded_turns("ministral3-reasoning", family_toks, tmp_path, [rec])

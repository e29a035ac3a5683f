"""Token-exact encoding with the real Qwen2.5 and SmolLM2 tokenizers and real data from
../shared (skipped, with the reason, where that folder is absent)."""

from __future__ import annotations

import json

import pytest
from conftest import encode, read_corpus, shared_asset

from llt.toy import write_jsonl

pytestmark = pytest.mark.slow  # the real tokenizers and data in ../shared

TOKENIZERS = {"qwen2.5": ("uint32", 151_665), "smollm2": ("uint16", 49_152)}


def load(name):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(shared_asset(f"assets/tokenizers/{name}")))


def lines(name, n):
    with open(shared_asset(f"assets/data/{name}")) as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_pretrain_wiki_exact(tmp_path, name):
    tok = load(name)
    docs = [r["text"] for r in lines("wiki_en.jsonl", 200)]
    manifest, corpus = encode(tmp_path, shared_asset(f"assets/tokenizers/{name}"),
                              [shared_asset("assets/data/wiki_en.jsonl")], max_length=1024,
                              num_workers=2)
    stream = [t for s in read_corpus(corpus) for t in s[0]]
    want = []
    for d in docs:
        want += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert stream[:len(want)] == want
    assert (manifest["dtype"], manifest["tokenizer"]["vocab_size"]) == TOKENIZERS[name]
    assert manifest["stats"]["records"] == 10_033


@pytest.mark.parametrize("name", TOKENIZERS)
def test_qa_alpaca_exact_ids_and_mask(tmp_path, name):
    tok = load(name)
    recs = lines("alpaca_eval.jsonl", 100)
    src = write_jsonl(tmp_path / "a.jsonl", recs)
    manifest, corpus = encode(tmp_path, shared_asset(f"assets/tokenizers/{name}"), [src],
                              encode_type="qa", q_field="instruction", a_field="output",
                              max_length=100_000)
    got = read_corpus(corpus)
    assert len(got) == 100
    for (toks, mask, _), r in zip(got, recs):
        q = tok(r["instruction"], add_special_tokens=False)["input_ids"]
        a = tok(r["output"], add_special_tokens=False)["input_ids"]
        assert toks == q + a + [tok.eos_token_id]
        assert mask.tolist() == [False] * len(q) + [True] * (len(a) + 1)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_chat_matches_apply_chat_template_and_masks_assistant_turns(tmp_path, name):
    tok = load(name)
    recs = lines("alpaca_eval.jsonl", 30)
    convs = []
    for i in range(0, 30, 3):
        a, b, c = recs[i:i + 3]
        msgs = [{"role": "user", "content": a["instruction"]},
                {"role": "assistant", "content": a["output"]},
                {"role": "user", "content": b["instruction"]},
                {"role": "assistant", "content": b["output"]}]
        if i % 2:
            msgs = [{"role": "system", "content": c["instruction"]}] + msgs
        convs.append({"messages": msgs})
    src = write_jsonl(tmp_path / "chat.jsonl", convs)
    _, corpus = encode(tmp_path, shared_asset(f"assets/tokenizers/{name}"), [src],
                       encode_type="chat", max_length=100_000)
    for (toks, mask, _), conv in zip(read_corpus(corpus), convs):
        # up to the last <|im_end|>: the newline after it is not generated, so not in the sample
        full = list(tok.apply_chat_template(conv["messages"], tokenize=True)["input_ids"])
        assert full[len(toks):] == tok("\n", add_special_tokens=False)["input_ids"]
        assert toks == full[:len(toks)]
        runs, cur = [], []
        for t, m in zip(toks, mask):
            if m:
                cur.append(t)
            elif cur:
                runs.append(cur)
                cur = []
        runs += [cur] if cur else []
        want = [m["content"] for m in conv["messages"] if m["role"] == "assistant"]
        assert [tok.decode(r) for r in runs] == [w + "<|im_end|>" for w in want]
        # the exact ids of each trained run: the content's tokens followed by <|im_end|>
        for run, w in zip(runs, want):
            assert run[-1] == tok.convert_tokens_to_ids("<|im_end|>")

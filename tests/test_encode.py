"""`llt encode` on a tiny in-process tokenizer: exact ids, loss masks, document starts,
packing, sharding and every input format give the same samples."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import encode, read_corpus

from llt.encode.packing import best_fit_decreasing
from llt.toy import toy_records, write_jsonl

DOCS, QA = toy_records(300, seed=1)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def expected_pretrain(tok, docs, L, prefix=()):
    stream, starts = [], []
    for d in docs:
        starts.append(len(stream))
        stream += list(prefix) + ids(tok, d) + [tok.eos_token_id]
    samples = []
    for lo in range(0, len(stream), L):
        docs_in = sorted({0} | {s - lo for s in starts if lo <= s < lo + L})
        samples.append((stream[lo:lo + L], docs_in))
    return samples


def test_pretrain_exact_ids_and_document_starts(tmp_path, tiny_tok, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src], max_length=64)
    got = read_corpus(corpus)
    want = expected_pretrain(tiny_tok, DOCS, 64)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[2] for g in got] == [w[1] for w in want]
    assert all(g[1].all() for g in got)  # pretrain: every token trained
    assert len(got[-1][0]) < 64  # the tail is kept, not padded
    s = manifest["stats"]
    assert s["records"] == 300 and s["tokens"] == sum(len(w[0]) for w in want) == s["trained_tokens"]
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == len(tiny_tok)


def test_pretrain_with_bos_tokenizer_prefixes_every_document(tmp_path, bos_tok_dir):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(bos_tok_dir))
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    assert tok("hi")["input_ids"][0] == bos
    src = write_jsonl(tmp_path / "d.jsonl", DOCS[:20])
    _, corpus = encode(tmp_path, bos_tok_dir, [src], max_length=10_000)
    (sample,) = read_corpus(corpus)
    assert sample[0] == expected_pretrain(tok, DOCS[:20], 10_000, prefix=[bos])[0][0]


@pytest.mark.parametrize("workers", [2, 3])
def test_several_workers_keep_every_token_in_order(tmp_path, tiny_tok, tiny_tok_dir, workers):
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src], max_length=50, num_workers=workers)
    got = read_corpus(corpus)
    flat = [t for g in got for t in g[0]]
    assert flat == [t for w in expected_pretrain(tiny_tok, DOCS, 10**9) for t in w[0]]
    assert all(len(g[0]) <= 50 for g in got)
    assert len(manifest["shards"]) == workers  # each worker writes its own shard(s)
    # the fingerprint the parent computes once the workers run reaches every header
    from llt.shards.fingerprint import vocab_fingerprint
    from llt.shards.reader import ShardReader

    want = vocab_fingerprint(tiny_tok)
    assert manifest["tokenizer"]["fingerprint"] == want
    assert {ShardReader(corpus / f"{s['name']}.idx").header["tokenizer_fingerprint"]
            for s in manifest["shards"]} == {want}


def test_qa_plain_exact_ids_and_mask(tmp_path, tiny_tok, tiny_tok_dir):
    src = write_jsonl(tmp_path / "qa.jsonl", QA[:40])
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", max_length=512)
    got = read_corpus(corpus)
    assert len(got) == 40
    for (toks, mask, docs), rec in zip(got, QA[:40]):
        q, a = ids(tiny_tok, rec["q"]), ids(tiny_tok, rec["a"])
        assert toks == q + a + [tiny_tok.eos_token_id]
        assert mask.tolist() == [False] * len(q) + [True] * (len(a) + 1)
        assert docs == [0]
    assert manifest["stats"]["trained_tokens"] == sum(int(m.sum()) for _, m, _ in got)


def chat_records():
    return [
        {"messages": [{"role": "user", "content": "What is 2 plus 3?"},
                      {"role": "assistant", "content": "2 plus 3 is 5."}]},
        {"messages": [{"role": "system", "content": "You count."},
                      {"role": "user", "content": "Count from 1."},
                      {"role": "assistant", "content": "1, 2, 3"},
                      {"role": "user", "content": "Again from 4."},
                      {"role": "assistant", "content": "4, 5, 6"}]},
    ]


def assistant_text(tok, toks, mask):
    """Decoded trained runs, one string per run."""
    runs, cur = [], []
    for t, m in zip(toks, mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def test_chat_exact_ids_and_assistant_only_mask(tmp_path, tiny_tok, tiny_tok_dir):
    recs = chat_records()
    src = write_jsonl(tmp_path / "chat.jsonl", recs)
    _, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="chat", max_length=512)
    got = read_corpus(corpus)
    for (toks, mask, _), rec in zip(got, recs):
        # The sample ends where the last assistant turn does: the newline the template
        # writes after <|im_end|> is not generated, so it is not part of the sample.
        want = tiny_tok.apply_chat_template(rec["messages"], tokenize=False).rstrip()
        assert toks == ids(tiny_tok, want)
        turns = [m["content"] + "<|im_end|>" for m in rec["messages"] if m["role"] == "assistant"]
        assert assistant_text(tiny_tok, toks, mask) == turns


def test_qa_through_chat_template(tmp_path, tiny_tok, tiny_tok_dir):
    src = write_jsonl(tmp_path / "qa.jsonl", QA[:5])
    _, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", qa_template="chat")
    for (toks, mask, _), rec in zip(read_corpus(corpus), QA[:5]):
        msgs = [{"role": "user", "content": rec["q"]}, {"role": "assistant", "content": rec["a"]}]
        assert toks == ids(tiny_tok, tiny_tok.apply_chat_template(msgs, tokenize=False).rstrip())
        assert assistant_text(tiny_tok, toks, mask) == [rec["a"] + "<|im_end|>"]


def test_merge_data_packs_without_losing_or_splitting_samples(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "qa.jsonl", QA)
    _, plain = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", corpus_name="plain")
    manifest, packed = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", corpus_name="packed",
                              merge_data=True, max_length=64, num_workers=2)
    singles = sorted((tuple(t), tuple(m)) for t, m, _ in read_corpus(plain))
    pieces = []
    bins = read_corpus(packed)
    for toks, mask, docs in bins:
        assert len(toks) <= 64
        for lo, hi in zip(docs, docs[1:] + [len(toks)]):
            pieces.append((tuple(toks[lo:hi]), tuple(mask[lo:hi])))
    assert sorted(pieces) == singles  # every sample exactly once, its mask intact
    s = manifest["stats"]
    assert s["samples_before_packing"] == 300 and s["samples"] == len(bins) < 300
    assert s["packing_efficiency"] == pytest.approx(s["tokens"] / (len(bins) * 64))
    assert len(bins) <= 11 / 9 * np.ceil(s["tokens"] / 64) + 2  # BFD's bound, one window per worker


def test_best_fit_decreasing_respects_capacity_and_places_every_item():
    rng = np.random.default_rng(0)
    for cap in (16, 100, 1024):
        lengths = rng.integers(1, cap + 1, 2000)
        bins = best_fit_decreasing(lengths, cap)
        assert sorted(i for b in bins for i in b) == list(range(2000))
        assert max(int(lengths[b].sum()) for b in bins) <= cap
        # never worse than 11/9 OPT + 1 (bound for BFD); OPT >= total / cap
        assert len(bins) <= 11 / 9 * np.ceil(lengths.sum() / cap) + 1
    assert best_fit_decreasing(np.array([5, 5, 5, 5]), 10) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_overlong_samples_dropped_or_truncated_and_counted(tmp_path, tiny_tok, tiny_tok_dir, mode):
    long_a = " ".join(str(i) for i in range(60))
    recs = [{"q": "Short?", "a": "Yes."}, {"q": "Long?", "a": long_a}]
    src = write_jsonl(tmp_path / "qa.jsonl", recs)
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", max_length=20, overlong=mode)
    got = read_corpus(corpus)
    s = manifest["stats"]
    if mode == "drop":
        assert len(got) == 1 and s["dropped_overlong"] == 1 and s["truncated"] == 0
    else:
        full = ids(tiny_tok, "Long?") + ids(tiny_tok, long_a)
        assert len(got) == 2 and got[1][0] == full[:20] and s["truncated"] == 1
        assert got[1][1].tolist() == [False] * len(ids(tiny_tok, "Long?")) + [True] * (20 - len(ids(tiny_tok, "Long?")))


def test_tokens_per_file_rolls_shards(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src], max_length=32, tokens_per_file=200)
    shards = manifest["shards"]
    assert [s["name"] for s in shards] == [f"c_{i}" for i in range(len(shards))]
    assert len(shards) > 5 and all(s["n_tokens"] <= 200 for s in shards)
    assert all(s["n_tokens"] > 200 - 32 for s in shards[:-1])  # full but for one sample
    assert sum(s["n_tokens"] for s in shards) == manifest["stats"]["tokens"]
    files = sorted(p.name for p in corpus.iterdir())
    assert files == sorted([f"c_{i}.{e}" for i in range(len(shards)) for e in ("bin", "idx")] + ["summary.json"])


def test_every_input_format_gives_the_same_samples(tmp_path, tiny_tok_dir):
    import datasets

    recs = QA[:120]
    (tmp_path / "in").mkdir()
    jsonl = write_jsonl(tmp_path / "in" / "a.jsonl", recs)
    arr = tmp_path / "in" / "a.json"
    arr.write_text(json.dumps(recs))
    with open(tmp_path / "in" / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["q", "a"])
        w.writeheader()
        w.writerows(recs)
    ds = datasets.Dataset.from_list(recs)
    import pyarrow.parquet as pq

    pq.write_table(ds.data.table, str(tmp_path / "in" / "a.parquet"), row_group_size=25)  # 5 groups
    ds.save_to_disk(str(tmp_path / "in" / "hf"))
    loader = tmp_path / "in" / "loader.py"
    loader.write_text(f"import json\ndef data_loader():\n    yield from json.load(open({str(arr)!r}))\n")
    want = None
    for name, src in [("jsonl", {"input_path": [str(jsonl)]}), ("json", {"input_path": [str(arr)]}),
                      ("csv", {"input_path": [str(tmp_path / "in" / "a.csv")]}),
                      ("parquet", {"input_path": [str(tmp_path / "in" / "a.parquet")]}),
                      ("hf", {"input_path": [str(tmp_path / "in" / "hf")]}),
                      ("loader", {"data_loader_path": str(loader)})]:
        _, corpus = encode(tmp_path, tiny_tok_dir, corpus_name=name, encode_type="qa", num_workers=2, **src)
        got = sorted((tuple(t), tuple(m)) for t, m, _ in read_corpus(corpus))
        assert len(got) == 120, name
        want = want or got
        assert got == want, name


def test_data_loader_pretrain_strings_seed_style(tmp_path, tiny_tok, tiny_tok_dir):
    loader = tmp_path / "data_loader.py"
    loader.write_text("def data_loader():\n    for i in range(50):\n        yield f'Document number {i}.'\n")
    _, corpus = encode(tmp_path, tiny_tok_dir, data_loader_path=str(loader), max_length=10_000)
    (sample,) = read_corpus(corpus)
    assert sample[0] == expected_pretrain(tiny_tok, [f"Document number {i}." for i in range(50)], 10_000)[0][0]


def test_empty_records_are_skipped_and_counted(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", ["one", "", "two"])
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src])
    assert manifest["stats"]["skipped_empty"] == 1 and manifest["stats"]["records"] == 3
    src = write_jsonl(tmp_path / "qa.jsonl", [{"q": "x", "a": ""}, {"q": "y", "a": "z"}])
    manifest, _ = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", corpus_name="qa")
    assert manifest["stats"]["skipped_empty"] == 1 and manifest["stats"]["samples"] == 1


def test_chat_starting_with_an_assistant_turn_masks_only_its_content(tmp_path, tiny_tok, tiny_tok_dir):
    recs = [{"messages": [{"role": "assistant", "content": "Hello there, how are you?"},
                          {"role": "user", "content": "Fine."}]}]
    src = write_jsonl(tmp_path / "chat.jsonl", recs)
    _, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="chat")
    ((toks, mask, _),) = read_corpus(corpus)
    assert assistant_text(tiny_tok, toks, mask) == ["Hello there, how are you?<|im_end|>"]
    header = ids(tiny_tok, "<|im_start|>assistant\n")
    assert toks[:len(header)] == header and not mask[:len(header)].any()


def test_several_files_split_across_workers_cover_every_byte_once(tmp_path, tiny_tok, tiny_tok_dir):
    from llt.encode.sources import find_inputs, plan_parts

    files = [write_jsonl(tmp_path / "in" / f"{i}.jsonl", DOCS[i * 60:(i + 1) * 60]) for i in range(5)]
    for workers in (1, 2, 3, 7):
        groups = plan_parts(find_inputs([str(tmp_path / "in")]), workers, None)
        assert 1 <= len(groups) <= workers
        covered = {}
        for part in (p for g in groups for p in g):
            covered.setdefault(part.path, []).append((part.start, part.end))
        for f in files:
            ranges = covered[str(f)]
            assert ranges[0][0] == 0 and ranges[-1][1] == f.stat().st_size
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order
    _, corpus = encode(tmp_path, tiny_tok_dir, [tmp_path / "in"], max_length=40, num_workers=3)
    flat = [t for s in read_corpus(corpus) for t in s[0]]
    assert flat == [t for w in expected_pretrain(tiny_tok, DOCS, 10**9) for t in w[0]]


def test_spawn_start_method_gives_the_same_shards(tmp_path, tiny_tok_dir, monkeypatch):
    """Where fork is unavailable (macOS, Windows) workers load the tokenizer themselves."""
    import llt.encode.job as enc

    src = write_jsonl(tmp_path / "qa.jsonl", QA[:100])
    _, forked = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", corpus_name="fork", num_workers=2)
    monkeypatch.setattr(enc.mp, "get_all_start_methods", lambda: ["spawn"])
    _, spawned = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", corpus_name="spawn", num_workers=2)
    strip = lambda corpus: [(t, m.tolist(), d) for t, m, d in read_corpus(corpus)]
    assert strip(forked) == strip(spawned)


def test_truncate_says_why_a_chat_with_nothing_trained_before_the_cut_was_dropped(tmp_path, tiny_tok_dir):
    from llt.encode.summary import describe

    long_user = " ".join(str(i) for i in range(200))
    recs = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
            {"messages": [{"role": "user", "content": long_user}, {"role": "assistant", "content": "Ok."}]}]
    src = write_jsonl(tmp_path / "chat.jsonl", recs)
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="chat", max_length=48, overlong="truncate")
    s = manifest["stats"]
    assert len(read_corpus(corpus)) == 1
    assert s["dropped_overlong"] == 1 and s["dropped_nothing_trained"] == 1 and s["truncated"] == 0
    text = describe(manifest, corpus)
    assert "1 of the dropped overlong samples had no trained token in their first 48 tokens" in text
    assert "raise --max_length" in text


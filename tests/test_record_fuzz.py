"""A seeded fuzz of chat and preference records (issue 23): each mutated record is line 2
of a 3-line file, and every run ends in the record encoded and counted in summary.json,
or in one line naming line 2 (`llt encode: error: FILE: line 2: ...`). Never a traceback,
never a record that disappears without being counted. As `tests/test_damage.py` does
for shards."""

from __future__ import annotations

import copy
import json
import random

import pytest
from chat_families import WEATHER, build_family_tokenizer, families

N_CASES = 240
SEED = int(__import__("os").environ.get("LLT_FUZZ_SEED", 23))

CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "4.", "reasoning_content": "2 + 2 = 4."},
    {"role": "user", "content": [{"type": "text", "text": "And the weather in Paris?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": '{"sky": "clear"}'},
    {"role": "assistant", "content": [{"type": "text", "text": "Clear skies."}]},
], "tools": [WEATHER]}
PAIR_TEXT = {"prompt": "What is 2 plus 2?", "chosen": " 4.", "rejected": " 5."}
PAIR_CHAT = {"prompt": [{"role": "user", "content": "What is 2 plus 2?"}],
             "chosen": [{"role": "assistant", "content": "4."}],
             "rejected": [{"role": "assistant", "content": "5.", "reasoning_content": "I guess."}]}

ODD_VALUES = [0, -1, 1.5, True, None, [], {}, "", "x", [1, 2], {"a": 1}, {"role": "user"},
              [{"role": {"r": 1}, "content": "x"}], "\ud800", "a\x00b", "\u202e\u0301", "word " * 100_000]


def _paths(node, path=()):
    """Every place in a record a mutation can reach."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _set(rec, path, value):
    if not path:
        return value
    node = rec
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return rec


def _delete(rec, path):
    node = rec
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return rec


def mutate(base: dict, rng: random.Random) -> tuple[str, str]:
    """(what was done, line 2's text): one or two mutations of `base`, or a broken line."""
    kind = rng.random()
    if kind < 0.08:  # broken line: cut short, a raw control character, deep nesting, not an object
        text = json.dumps(base)
        return "broken", rng.choice([text[: rng.randrange(1, len(text))], text.replace(",", ",\x01", 1),
                                     "[" * 5000 + "]" * 5000, '{"messages": ' + "[" * 3000 + "]" * 3000 + "}",
                                     "[1, 2]", '"a string"', "null", "42", "{", "\ufeff" + text])
    rec = copy.deepcopy(base)
    done = []
    for _ in range(rng.choice([1, 1, 2])):
        paths = list(_paths(rec))
        path = rng.choice(paths)
        if path and rng.random() < 0.25 and isinstance(path[-1], str):
            rec = _delete(rec, path)
            done.append(f"del {path}")
        else:
            value = copy.deepcopy(rng.choice(ODD_VALUES))
            rec = _set(rec, path, value)
            done.append(f"{path} = {str(value)[:30]!r}")
    return "; ".join(done), json.dumps(rec)  # ensure_ascii: a lone surrogate is an escape, valid JSON


@pytest.fixture(scope="module")
def qwen3_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz") / "qwen3"
    build_family_tokenizer(families()["qwen3"], d)
    return d


def _run(tmp_path, tok, encode_type: str, line2: str, capsys) -> tuple[int, str, dict | None]:
    from llt.cli import main

    src = tmp_path / "data.jsonl"
    good = {"chat": CHAT, "preference": PAIR_TEXT}[encode_type]
    src.write_text(json.dumps(good) + "\n" + line2 + "\n" + json.dumps(good) + "\n")
    out = tmp_path / "out"
    rc = main(["encode", "--tokenizer_path", str(tok), "--input_path", str(src), "--output_path", str(out),
               "--corpus_name", "c", "--encode_type", encode_type, "--num_workers", "1", "--overwrite",
               "--max_length", "100000"])
    err = capsys.readouterr().err
    summary = out / "c" / "summary.json"
    return rc, err, json.loads(summary.read_text()) if rc == 0 and summary.exists() else None


def _cases(n: int):
    rng = random.Random(SEED)
    bases = [("chat", CHAT), ("preference", PAIR_TEXT), ("preference", PAIR_CHAT)]
    for i in range(n):
        encode_type, base = bases[i % len(bases)]
        what, line = mutate(base, rng)
        yield i, encode_type, what, line


def _check(i, encode_type, what, line, rc, err, summary, src_name="data.jsonl"):
    label = f"case {i} ({encode_type}: {what})"
    assert "Traceback" not in err, f"{label}: a traceback\n{err[-3000:]}"
    if rc == 0:
        s = summary["stats"]
        accounted = s["records"]
        assert accounted == 3, f"{label}: {accounted} records counted of 3\n{s}"
        return "encoded"
    errors = [ln for ln in err.splitlines() if ln.startswith("llt encode: error:")]
    assert rc == 2 and len(errors) == 1, f"{label}: rc {rc}\n{err[-3000:]}"
    assert f"{src_name}: line 2" in errors[0], f"{label}: the error does not name line 2: {errors[0][:300]}"
    assert len(errors[0]) < 1200, f"{label}: not one short line: {errors[0][:300]}..."
    return "refused"


def test_mutated_records_are_encoded_and_counted_or_refused_naming_line_2(tmp_path, qwen3_tok, capsys):
    outcomes = {"encoded": 0, "refused": 0}
    for i, encode_type, what, line in _cases(N_CASES):
        rc, err, summary = _run(tmp_path, qwen3_tok, encode_type, line, capsys)
        outcomes[_check(i, encode_type, what, line, rc, err, summary)] += 1
    print(f"{N_CASES} mutated records: {outcomes}")
    assert outcomes["encoded"] > 10 and outcomes["refused"] > 100  # the fuzz reaches both ends

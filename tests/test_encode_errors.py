"""Bad input gets an error naming the file, record and problem, and leaves nothing behind
that a trainer would read."""

from __future__ import annotations

import json

import pytest
from conftest import encode, read_corpus, shared_asset

from llt.encode.config import EncodeArgs
from llt.errors import LltError
from llt.toy import write_jsonl


def assert_nothing_written(tmp_path, name="c"):
    corpus = tmp_path / "out" / name
    assert not corpus.exists(), f"left behind: {sorted(p.name for p in corpus.iterdir())}"


def fails(tmp_path, tok_dir, match, **kw):
    with pytest.raises(LltError, match=match):
        encode(tmp_path, tok_dir, **kw)
    assert_nothing_written(tmp_path, kw.get("corpus_name", "c"))


def loader(tmp_path, body: str):
    path = tmp_path / "data_loader.py"
    path.write_text(body)
    return str(path)


def test_data_loader_problems(tmp_path, tiny_tok_dir):
    fails(tmp_path, tiny_tok_dir, r"--data_loader_path .*nope\.py: no such file",
          data_loader_path=str(tmp_path / "nope.py"))
    fails(tmp_path, tiny_tok_dir, "defines no data_loader\\(\\) function",
          data_loader_path=loader(tmp_path, "def other():\n    yield 'x'\n"))
    fails(tmp_path, tiny_tok_dir, "must return a generator .* got int",
          data_loader_path=loader(tmp_path, "def data_loader():\n    return 3\n"))
    fails(tmp_path, tiny_tok_dir, "importing it failed: ZeroDivisionError",
          data_loader_path=loader(tmp_path, "1/0\n"))
    body = "def data_loader():\n    for i in range(5):\n        yield 'doc'\n    raise RuntimeError('disk gone')\n"
    fails(tmp_path, tiny_tok_dir, "data_loader\\(\\) raised after 5 records: RuntimeError: disk gone",
          data_loader_path=loader(tmp_path, body), num_workers=2)


def test_wrong_record_types_name_the_record(tmp_path, tiny_tok_dir):
    fails(tmp_path, tiny_tok_dir, r"data_loader\(\) record 2: expected an object with field 'q', got str",
          data_loader_path=loader(tmp_path, "def data_loader():\n    yield {'q': 'a', 'a': 'b'}\n"
                                            "    yield {'q': 'c', 'a': 'd'}\n    yield 'oops'\n"),
          encode_type="qa")
    src = write_jsonl(tmp_path / "d.jsonl", [{"q": "1", "a": "2"}, {"q": "3", "a": "4"}, {"q": "5"}])
    fails(tmp_path, tiny_tok_dir, r"d\.jsonl: line 3: missing field 'a' \(fields: 'q'\)",
          inputs=[src], encode_type="qa")
    src = write_jsonl(tmp_path / "n.jsonl", [{"text": "fine"}, {"text": None}])
    fails(tmp_path, tiny_tok_dir, r"n\.jsonl: line 2: field 'text' is NoneType, expected str", inputs=[src])
    src = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": 5}]}])
    fails(tmp_path, tiny_tok_dir, r"m\.jsonl: line 1: message 0: content is int, expected a string or a list of text parts",
          inputs=[src], encode_type="chat")


def test_broken_files_name_the_line(tmp_path, tiny_tok_dir):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n\n{"text": "c"\n{"text": "d"}\n')
    fails(tmp_path, tiny_tok_dir, r"bad\.jsonl: line 4: invalid JSON", inputs=[p])
    p = tmp_path / "utf.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    fails(tmp_path, tiny_tok_dir, r"utf\.jsonl: line 2: invalid UTF-8", inputs=[p])
    p = tmp_path / "sur.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "bad \\ud800 surrogate"}\n')
    fails(tmp_path, tiny_tok_dir, r"sur\.jsonl: line 2: a lone surrogate or invalid unicode", inputs=[p])


def test_error_in_one_of_several_workers_stops_all_and_leaves_nothing(tmp_path, tiny_tok_dir):
    p = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"document {i}"}) for i in range(3000)]
    lines[2900] = '{"text": 7}'
    p.write_text("\n".join(lines) + "\n")
    fails(tmp_path, tiny_tok_dir, r"big\.jsonl: line 2901: field 'text' is int", inputs=[p], num_workers=2)


def test_tokenizer_problems(tmp_path, tiny_tok, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", ["x"])
    fails(tmp_path, tmp_path / "missing", r"--tokenizer_path .*missing: could not load a tokenizer \(no such folder\)",
          inputs=[src])
    plain = tmp_path / "no_template"
    tiny_tok.save_pretrained(str(plain))
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    cfg.pop("eos_token", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    fails(tmp_path, plain, "has no chat template", inputs=[src], encode_type="chat")
    fails(tmp_path, plain, "has no EOS token", inputs=[src], encode_type="pretrain")


@pytest.mark.slow  # the Qwen2.5 tokenizer from ../shared
def test_int16_with_a_large_vocabulary_fails_before_any_work(tmp_path):
    qwen = shared_asset("assets/tokenizers/qwen2.5")
    src = write_jsonl(tmp_path / "d.jsonl", ["x"])
    fails(tmp_path, qwen, r"--save_dtype int16 stores ids below 65,536, but the tokenizer has 151,665 tokens",
          inputs=[src], save_dtype="int16")
    assert not (tmp_path / "out").exists()


def test_strict_makes_empty_records_fatal(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", ["one", ""])
    fails(tmp_path, tiny_tok_dir, r"d\.jsonl: line 2: empty text \(--strict", inputs=[src], strict=True)


def test_bad_flags(tmp_path):
    with pytest.raises(LltError, match="--data_loader_path FILE.py, --input_path FILE... or --dataset NAME"):
        EncodeArgs(tokenizer_path="t", output_path="o", corpus_name="c")
    with pytest.raises(LltError, match="--max_length must be positive"):
        EncodeArgs(tokenizer_path="t", output_path="o", corpus_name="c", input_path=["x"], max_length=0)
    with pytest.raises(LltError, match="--corpus_name"):
        EncodeArgs(tokenizer_path="t", output_path="o", corpus_name="a/b", input_path=["x"])


def test_existing_corpus_is_never_silently_mixed(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", ["alpha beta"] * 50)
    first, corpus = encode(tmp_path, tiny_tok_dir, [src], max_length=16, tokens_per_file=64)
    with pytest.raises(LltError, match="already holds a finished corpus .* --overwrite"):
        encode(tmp_path, tiny_tok_dir, [src], max_length=16)
    assert read_corpus(corpus)  # the finished corpus is untouched
    small = write_jsonl(tmp_path / "s.jsonl", ["gamma"])
    second, _ = encode(tmp_path, tiny_tok_dir, [small], max_length=16, overwrite=True)
    assert len(second["shards"]) == 1 < len(first["shards"])
    assert sorted(p.name for p in corpus.iterdir()) == ["c_0.bin", "c_0.idx", "summary.json"]


def test_unfinished_run_is_discarded_by_the_next_run(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", ["alpha beta"] * 50)
    encode(tmp_path, tiny_tok_dir, [src], max_length=16, tokens_per_file=64)
    corpus = tmp_path / "out" / "c"
    (corpus / "summary.json").unlink()  # as if killed while moving shards into place
    (corpus / ".llt-partial").mkdir()
    (corpus / ".llt-partial" / "w000_00000.bin.part").write_bytes(b"junk")
    (corpus / "c_99.bin").write_bytes(b"junk")
    manifest, _ = encode(tmp_path, tiny_tok_dir, [src], max_length=16)
    assert sorted(p.name for p in corpus.iterdir()) == ["c_0.bin", "c_0.idx", "summary.json"]
    assert manifest["stats"]["tokens"] == sum(len(t) for t, _, _ in read_corpus(corpus))


def test_failed_overwrite_keeps_the_finished_corpus(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "d.jsonl", ["alpha beta"] * 50)
    first, corpus = encode(tmp_path, tiny_tok_dir, [src], max_length=16, tokens_per_file=64)
    before = {p.name: p.read_bytes() for p in corpus.iterdir()}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": 3}])
    with pytest.raises(LltError, match=r"bad\.jsonl: line 2"):
        encode(tmp_path, tiny_tok_dir, [bad], max_length=16, overwrite=True)
    assert {p.name: p.read_bytes() for p in corpus.iterdir()} == before


@pytest.mark.slow
def test_kill_9_leaves_nothing_a_reader_trusts_and_the_same_command_finishes(tmp_path, tiny_tok_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from llt.cli import main
    from llt.shards.manifest import find_corpora

    loader = tmp_path / "loader.py"
    loader.write_text(
        "import os, time\n"
        "def data_loader():\n"
        "    for i in range(6000):\n"
        "        yield f'document number {i} ' * 4\n"
        "        if i == 4000 and os.environ.get('HANG'):\n"
        "            time.sleep(120)\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llt", "encode", "--tokenizer_path", str(tiny_tok_dir),
           "--data_loader_path", str(loader), "--output_path", str(out), "--corpus_name", "c",
           "--max_length", "32", "--tokens_per_file", "2000", "--num_workers", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "HANG": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = out / "c" / ".llt-partial"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.rglob("*.idx.part"))) < 2:
        time.sleep(0.1)
    assert list(partial.rglob("*.idx.part")), "the encoder never wrote a shard"
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers are orphaned
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, "orphaned workers kept running"
    corpus = out / "c"
    assert not (corpus / "summary.json").exists()
    assert not [p for p in corpus.iterdir() if p.suffix in (".bin", ".idx")]
    assert find_corpora(out) == []
    # the same command, run again, starts over and finishes
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not partial.exists()
    assert main(["verify", str(corpus)]) == 0
    assert read_corpus(corpus) and json.loads((corpus / "summary.json").read_text())["stats"]["records"] == 6000

"""`llt inspect` shows what the model will learn; `llt verify` catches damaged shards."""

from __future__ import annotations

import json

import numpy as np
from conftest import encode

from llt.cli import main
from llt.shards.format import file_xxh3
from llt.toy import toy_records, write_jsonl

_, QA = toy_records(50, seed=3)


def make(tmp_path, tiny_tok_dir):
    src = write_jsonl(tmp_path / "qa.jsonl", QA)
    _, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", max_length=64,
                       merge_data=True, tokens_per_file=500)
    return corpus


def test_inspect_marks_trained_tokens_and_documents(tmp_path, tiny_tok_dir, capsys):
    corpus = make(tmp_path, tiny_tok_dir)
    assert main(["inspect", str(corpus), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and "sample lengths:" in out and "packed" in out
    first = next(r for r in QA if f"What is {r['q'].split()[2]} plus" in out)
    assert f"{first['q']}[[{first['a']}<|im_end|>]]" in out  # question plain, answer marked
    assert "----- document starts at token" in out


def test_verify_ok_then_catches_each_kind_of_damage(tmp_path, tiny_tok_dir, capsys):
    corpus = make(tmp_path, tiny_tok_dir)
    assert main(["verify", str(tmp_path / "out")]) == 0
    assert "OK" in capsys.readouterr().out

    # a flipped byte in a .bin
    b = corpus / "c_0.bin"
    data = bytearray(b.read_bytes())
    data[10] ^= 0xFF
    b.write_bytes(bytes(data))
    assert main(["verify", str(corpus)]) == 1
    assert "c_0.bin: checksum mismatch" in capsys.readouterr().out
    data[10] ^= 0xFF
    b.write_bytes(bytes(data))

    # a truncated .bin
    b.write_bytes(bytes(data[:-6]))
    assert main(["verify", str(corpus)]) == 1
    out = capsys.readouterr().out
    assert "c_0.bin:" in out and "bytes, summary.json says" in out and "truncated" in out
    b.write_bytes(bytes(data))

    # a damaged header
    i = corpus / "c_1.idx"
    idx = bytearray(i.read_bytes())
    i.write_bytes(b"XXXXXXXX" + bytes(idx[8:]))
    assert main(["verify", str(corpus)]) == 1
    assert "c_1.idx: not an llt shard index" in capsys.readouterr().out
    i.write_bytes(bytes(idx))

    # an id outside the vocabulary, with the manifest's checksum updated to match
    bad = np.frombuffer(bytes(data), np.uint16).copy()
    bad[3] = 60_000
    b.write_bytes(bad.tobytes())
    m = json.loads((corpus / "summary.json").read_text())
    m["shards"][0]["bin_xxh3_128"] = file_xxh3(b)
    (corpus / "summary.json").write_text(json.dumps(m))
    assert main(["verify", str(corpus)]) == 1
    out = capsys.readouterr().out
    assert "token id 60000 at position 3 (sample 0) is not below the vocabulary size" in out

    # a stray shard not in the manifest
    b.write_bytes(bytes(data))
    m["shards"][0]["bin_xxh3_128"] = file_xxh3(b)
    (corpus / "summary.json").write_text(json.dumps(m))
    (corpus / "c_77.bin").write_bytes(b"")
    assert main(["verify", str(corpus)]) == 1
    assert "c_77.bin: on disk but not in summary.json" in capsys.readouterr().out
    (corpus / "c_77.bin").unlink()
    assert main(["verify", str(corpus)]) == 0


def test_single_shard_paths(tmp_path, tiny_tok_dir, capsys):
    import shutil

    corpus = make(tmp_path, tiny_tok_dir)
    assert main(["verify", str(corpus / "c_1.idx")]) == 0
    assert main(["inspect", str(corpus / "c_1.bin"), "-n", "1"]) == 0
    assert "c_1[0]" in capsys.readouterr().out
    data = bytearray((corpus / "c_0.bin").read_bytes())
    data[0] ^= 0xFF
    (corpus / "c_0.bin").write_bytes(bytes(data))
    assert main(["verify", str(corpus / "c_1.idx")]) == 0  # only the shard asked about
    assert main(["verify", str(corpus / "c_0.bin")]) == 1
    # a shard copied away from its corpus: structure checked, no checksums to compare
    lone = tmp_path / "lone"
    lone.mkdir()
    for ext in ("bin", "idx"):
        shutil.copy(corpus / f"c_1.{ext}", lone / f"c_1.{ext}")
    capsys.readouterr()
    assert main(["verify", str(lone / "c_1.idx")]) == 0
    assert "no summary.json: checksums not checked" in capsys.readouterr().out
    assert main(["inspect", str(lone / "c_1.idx")]) == 2
    assert "pass --tokenizer_path" in capsys.readouterr().err
    assert main(["inspect", str(lone / "c_1.idx"), "--tokenizer_path", str(tiny_tok_dir)]) == 0
    assert "[[" in capsys.readouterr().out


def test_a_corpus_name_with_dots_reads_back_everywhere(tmp_path, tiny_tok_dir, capsys):
    """`qwen2.5-chat` has shards `qwen2.5-chat_0.idx`: reader, dataset, verify and inspect
    find them (a suffix swap would look for `qwen2.idx`)."""
    from llt.data.dataset import ShardDataset
    from llt.shards.reader import ShardReader

    src = write_jsonl(tmp_path / "qa.jsonl", QA)
    manifest, corpus = encode(tmp_path, tiny_tok_dir, [src], encode_type="qa", max_length=64,
                              corpus_name="qwen2.5-chat", tokens_per_file=500)
    names = [s["name"] for s in manifest["shards"]]
    assert len(names) > 1 and names[0] == "qwen2.5-chat_0"
    for name in names:  # by either file, or the stem
        for path in (corpus / f"{name}.idx", corpus / f"{name}.bin", corpus / name):
            assert len(ShardReader(path)) == next(s["n_samples"] for s in manifest["shards"] if s["name"] == name)
    assert len(ShardDataset(str(corpus))) == manifest["stats"]["samples"]
    assert main(["verify", str(corpus)]) == 0 and "OK" in capsys.readouterr().out
    assert main(["verify", str(corpus / f"{names[1]}.idx")]) == 0
    assert main(["inspect", str(corpus), "-n", "1"]) == 0 and "sample lengths:" in capsys.readouterr().out

"""Damaged and foreign shards: a seeded mutation loop over header fields, array dtypes,
offsets, header lengths, bytes, file lengths and summary.json. `llt verify`, `llt inspect`
and the training start-up must raise nothing but llt's own errors, and must never pass a
damaged corpus."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from llt.errors import LltError
from llt.shards.format import ALIGN, PREFIX, round_up
from llt.toy import toy_records, write_jsonl
from tests.conftest import encode

BAD_VALUES = ["x", -1, 2**70, [], {}, None, 1.5, True, [1, "u8", 2], "12", 0]
DTYPE_SPELLINGS = [">u8", "=u8", "u8 ", "uint64", "i8", "<i4", "u2", "U8", "<<u8", 8]
N_MUTATIONS = 200


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tok_dir):
    tmp = tmp_path_factory.mktemp("damage")
    qa = [{"q": q, "a": a} for q, a in ((r["q"], r["a"]) for r in toy_records(60)[1])]
    _, folder = encode(tmp, tiny_tok_dir, [write_jsonl(tmp / "qa.jsonl", qa)], encode_type="qa",
                       merge_data=True, max_length=96, tokens_per_file=600)
    assert len(list(folder.glob("*.idx"))) >= 2
    return folder


def _split_idx(data: bytes):
    magic, major, minor, hlen = PREFIX.unpack(data[:PREFIX.size])
    return (magic, major, minor, hlen), data[PREFIX.size:PREFIX.size + hlen], data[PREFIX.size + hlen:]


def _write_header(path: Path, mutate) -> None:
    """Rewrite an .idx header through `mutate(header)`, the arrays moved to the new body
    start, so only what `mutate` changed is wrong."""
    data = path.read_bytes()
    (magic, major, minor, hlen), body, _ = _split_idx(data)
    header = json.loads(body)
    mutate(header)
    new = json.dumps(header).encode()
    start, new_start = round_up(PREFIX.size + hlen, ALIGN), round_up(PREFIX.size + len(new), ALIGN)
    head = PREFIX.pack(magic, major, minor, len(new)) + new
    path.write_bytes(head + bytes(new_start - len(head)) + data[start:])


def _mutate(folder: Path, rng: random.Random, manifest: bool = True) -> str:
    """Damage one file of `folder` at random; return what was done."""
    shards = sorted(folder.glob("*.idx"))
    idx = rng.choice(shards)
    binf = idx.with_suffix(".bin")
    kind = rng.choice(["header_value", "array_entry", "dtype", "offset", "hlen", "flip", "truncate",
                       "extend"] + ["manifest"] * manifest)
    if kind == "header_value":
        key = rng.choice(["dtype", "vocab_size", "n_samples", "n_tokens", "n_trained_tokens", "has_loss_mask",
                          "n_spans", "n_docs", "tokenizer_fingerprint", "arrays"])
        value = rng.choice(BAD_VALUES + [rng.randint(0, 5000)])
        _write_header(idx, lambda h: h.__setitem__(key, value))
        return f"{idx.name}: {key} = {value!r}"
    if kind in ("array_entry", "dtype", "offset"):
        name = rng.choice(["sample_offsets", "span_offsets", "spans", "doc_offsets", "doc_starts"])

        def change(h):
            entry = h["arrays"][name]
            if kind == "dtype":
                entry[1] = rng.choice(DTYPE_SPELLINGS)
            elif kind == "offset":
                entry[rng.choice([0, 2])] = rng.choice([10**9, entry[0] + 8, entry[2] + 1, max(entry[2] - 1, 0), 4])
            else:
                h["arrays"][name] = rng.choice(BAD_VALUES)
        _write_header(idx, change)
        return f"{idx.name}: arrays.{name} ({kind})"
    if kind == "hlen":
        data = bytearray(idx.read_bytes())
        (magic, major, minor, hlen), _, _ = _split_idx(bytes(data))
        new = max(0, hlen + rng.choice([-40, -3, -1, 1, 5, 10**6]))
        data[:PREFIX.size] = PREFIX.pack(magic, major, minor, new)
        idx.write_bytes(bytes(data))
        return f"{idx.name}: header length {hlen} -> {new}"
    if kind == "flip":
        target = rng.choice([idx, binf])
        data = bytearray(target.read_bytes())
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        return f"{target.name}: bit flip at {pos}"
    if kind in ("truncate", "extend"):
        target = rng.choice([idx, binf])
        data = target.read_bytes()
        data = data[:rng.randrange(len(data))] if kind == "truncate" else data + bytes(rng.randint(1, 100))
        target.write_bytes(data)
        return f"{target.name}: {kind}d to {len(data)} bytes"
    manifest = folder / "summary.json"
    text = manifest.read_text()
    m = json.loads(text)
    how = rng.choice(["truncate", "list", "shard_field", "tokenizer", "shards"])
    if how == "truncate":
        manifest.write_text(text[:rng.randrange(len(text))])
    elif how == "list":
        manifest.write_text(json.dumps([m]))
    else:
        if how == "shard_field":
            field = rng.choice(["name", "n_samples", "n_tokens", "bin_bytes", "idx_bytes", "bin_xxh3_128"])
            m["shards"][rng.randrange(len(m["shards"]))][field] = rng.choice(BAD_VALUES + ["c_9"])
        elif how == "tokenizer":
            m["tokenizer"][rng.choice(["vocab_size", "fingerprint"])] = rng.choice(BAD_VALUES)
        else:
            m["shards"] = rng.choice(BAD_VALUES + [m["shards"][:1]])
        manifest.write_text(json.dumps(m))
    return f"summary.json: {how}"


def _verify(folder):
    from llt.shards.verify import verify_path
    try:
        return verify_path(folder)
    except LltError as e:
        return [str(e)]


def _inspect(folder, tok, capsys):
    from llt.shards.inspect import inspect_main
    try:
        rc = inspect_main([str(folder), "-n", "3", "--tokenizer_path", str(tok)])
    except LltError:
        rc = 2
    capsys.readouterr()
    return rc


def _startup(folder):
    """What `llt train` does with --data_path before the first step."""
    from types import SimpleNamespace

    from llt.data.run_data import build_data
    from llt.train.checks import verify_on_local_main
    try:
        verify_on_local_main([str(folder)], SimpleNamespace(local_process_index=0))
        data = build_data(SimpleNamespace(data_path=[str(folder)], eval_data_path=None, eval_split=0.0,
                                          shuffle_data=True), seed=1)
        data.dataset[0]
    except LltError:
        return False
    return True


def test_random_damage_is_always_caught_with_llts_own_error(corpus, tmp_path, tiny_tok_dir, capsys):
    rng = random.Random(12)
    assert _verify(corpus) == [] and _inspect(corpus, tiny_tok_dir, capsys) == 0 and _startup(corpus)
    seen = set()
    for k in range(N_MUTATIONS):
        folder = tmp_path / f"m{k}" / corpus.name
        shutil.copytree(corpus, folder)
        what = _mutate(folder, rng)
        seen.add(what.split(":")[1].split()[0])
        # Any exception other than LltError fails the test with its traceback.
        problems = _verify(folder)
        assert problems, f"verify passed a damaged corpus: {what}"
        assert all("\n" not in p for p in problems), (what, problems)
        assert _inspect(folder, tiny_tok_dir, capsys) != 0, f"inspect passed a damaged corpus: {what}"
        assert not _startup(folder), f"training start-up accepted a damaged corpus: {what}"
        shutil.rmtree(folder.parent)
    assert len(seen) >= 8  # the loop reached every kind of damage


def test_a_lone_damaged_shard_never_crashes_the_tools(corpus, tmp_path, tiny_tok_dir, capsys):
    """Without summary.json there are no checksums: a flipped id may pass, but nothing
    may crash."""
    rng = random.Random(34)
    for k in range(N_MUTATIONS // 2):
        folder = tmp_path / f"m{k}" / corpus.name
        shutil.copytree(corpus, folder)
        (folder / "summary.json").unlink()
        _mutate(folder, rng, manifest=False)
        idx = sorted(folder.glob("*.idx"))[0]
        _verify(idx)
        _inspect(idx, tiny_tok_dir, capsys)
        shutil.rmtree(folder.parent)


def test_explicit_little_endian_dtypes_read_as_the_spec_spelling(corpus, tmp_path):
    """`"<u8"` is numpy's explicit spelling of the spec's `u8`: accepted (docs/format.md);
    a big-endian `">u8"` is refused by name."""
    from llt.shards.format import ShardFormatError
    from llt.shards.reader import ShardReader

    src = sorted(corpus.glob("*.idx"))[0]
    want = ShardReader(src)
    for spelling, ok in (("<", True), (">", False)):
        dst = tmp_path / spelling.replace("<", "le").replace(">", "be") / src.name
        dst.parent.mkdir()
        shutil.copy(src, dst)
        shutil.copy(src.with_suffix(".bin"), dst.with_suffix(".bin"))
        _write_header(dst, lambda h: [e.__setitem__(1, spelling + e[1]) for e in h["arrays"].values()])
        if ok:
            r = ShardReader(dst)
            assert all(r.tokens(i).tolist() == want.tokens(i).tolist() and
                       r.loss_spans(i).tolist() == want.loss_spans(i).tolist() for i in range(len(r)))
        else:
            with pytest.raises(ShardFormatError, match=r"damaged header: array \w+ has dtype '>u\d'; the format's is 'u\d' \(little-endian\)"):
                ShardReader(dst)

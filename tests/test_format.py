"""The shard format: round trips, dtype choice, 64-bit offsets, and every reader error."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from llt.shards.format import MAGIC, ShardFormatError, choose_dtype
from llt.shards.reader import ShardReader
from llt.shards.writer import SampleBatch, ShardWriter


def random_batch(rng, n, vocab, with_mask=True) -> tuple[SampleBatch, list]:
    samples = []
    for _ in range(n):
        length = int(rng.integers(1, 60))
        ids = rng.integers(0, vocab, length)
        docs = np.unique(np.concatenate([[0], rng.integers(0, length, int(rng.integers(0, 3)))]))
        cuts = np.unique(rng.integers(0, length + 1, 4))
        spans = np.array([[a, b] for a, b in zip(cuts[:-1:2], cuts[1::2]) if a < b], np.int64).reshape(-1, 2)
        samples.append((ids, spans, docs))
    batch = SampleBatch(
        tokens=np.concatenate([s[0] for s in samples]).astype(np.uint32),
        lengths=np.array([len(s[0]) for s in samples]),
        doc_counts=np.array([len(s[2]) for s in samples]),
        doc_starts=np.concatenate([s[2] for s in samples]),
        span_counts=np.array([len(s[1]) for s in samples]) if with_mask else None,
        spans=np.concatenate([s[1] for s in samples]) if with_mask else None,
    )
    return batch, samples


def write(tmp_path, batches, dtype="uint16", vocab=1000, with_mask=True):
    w = ShardWriter(tmp_path / "s", dtype, vocab, with_mask, {"note": "x"})
    for b in batches:
        w.add(b)
    done = w.close()
    done.tmp_bin.rename(tmp_path / "s.bin")
    done.tmp_idx.rename(tmp_path / "s.idx")
    return done, ShardReader(tmp_path / "s.idx")


@pytest.mark.parametrize("dtype,vocab", [("uint16", 65_536), ("uint32", 151_665)])
def test_round_trip_exact(tmp_path, dtype, vocab):
    rng = np.random.default_rng(0)
    b1, s1 = random_batch(rng, 50, vocab)
    b2, s2 = random_batch(rng, 30, vocab)
    done, r = write(tmp_path, [b1, b2], dtype, vocab)
    samples = s1 + s2
    assert len(r) == 80 and r.n_tokens == sum(len(s[0]) for s in samples)
    assert r.dtype.itemsize == (2 if dtype == "uint16" else 4)
    assert (tmp_path / "s.bin").stat().st_size == r.n_tokens * r.dtype.itemsize  # no padding
    for i, (ids, spans, docs) in enumerate(samples):
        assert r.tokens(i).tolist() == ids.tolist()
        assert r.loss_spans(i).tolist() == spans.tolist()
        assert r.doc_starts(i).tolist() == docs.tolist()
        mask = np.zeros(len(ids), bool)
        for a, b in spans:
            mask[a:b] = True
        assert r.loss_mask(i).tolist() == mask.tolist()
    assert done.n_trained == sum(int((s[1][:, 1] - s[1][:, 0]).sum()) for s in samples)
    assert r.header["note"] == "x" and r.header["vocab_size"] == vocab


def test_tokens_are_zero_copy_views(tmp_path):
    batch, _ = random_batch(np.random.default_rng(1), 5, 100)
    _, r = write(tmp_path, [batch])
    t = r.tokens(3)
    assert isinstance(r.token_array, np.memmap) and np.shares_memory(t, r.token_array)
    assert not t.flags.writeable


def test_pretrain_shard_has_no_mask_array_and_trains_everything(tmp_path):
    batch, samples = random_batch(np.random.default_rng(2), 4, 100, with_mask=False)
    _, r = write(tmp_path, [batch], with_mask=False)
    assert "spans" not in r.header["arrays"]
    assert r.loss_mask(2).all() and len(r.loss_mask(2)) == len(samples[2][0])


def test_offsets_are_64_bit(tmp_path):
    """Past 2**32 tokens offsets must not wrap (corpora of billions of tokens)."""
    batch, _ = random_batch(np.random.default_rng(3), 3, 100)
    w = ShardWriter(tmp_path / "s", "uint16", 100, True)
    w.n_tokens = 5 * 2**32  # as if 20G tokens were already written
    w.add(batch)
    done = w.close()
    raw = np.fromfile(done.tmp_idx, np.uint8)
    hlen = struct.unpack("<I", raw[12:16].tobytes())[0]
    header = json.loads(raw[16:16 + hlen].tobytes())
    start = (16 + hlen + 63) // 64 * 64 + header["arrays"]["sample_offsets"][0]
    offsets = raw[start:start + 8 * 4].view("<u8")
    assert offsets.tolist() == [0] + (5 * 2**32 + np.cumsum(batch.lengths)).tolist()


def test_writer_never_uses_final_names(tmp_path):
    batch, _ = random_batch(np.random.default_rng(4), 3, 100)
    w = ShardWriter(tmp_path / "s", "uint16", 100, True)
    w.add(batch)
    done = w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["s.bin.part", "s.idx.part"] and done.tmp_idx.name == "s.idx.part"
    w2 = ShardWriter(tmp_path / "t", "uint16", 100, True)
    w2.add(batch)
    w2.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_choose_dtype():
    assert choose_dtype("auto", 49_152) == "uint16"
    assert choose_dtype("auto", 65_536) == "uint16"
    assert choose_dtype("auto", 65_537) == "uint32"
    assert choose_dtype("int16", 65_536) == "uint16"  # seed name, ids up to 65,535
    assert choose_dtype("int32", 151_665) == "uint32"
    with pytest.raises(ValueError, match=r"int16 stores ids below 65,536, but the tokenizer has 151,665"):
        choose_dtype("int16", 151_665)
    with pytest.raises(ValueError, match="not one of"):
        choose_dtype("int8", 10)


# ---------------------------------------------------------------------- reader errors
@pytest.fixture
def shard(tmp_path):
    batch, _ = random_batch(np.random.default_rng(5), 10, 100)
    write(tmp_path, [batch])
    return tmp_path / "s"


def test_rejects_wrong_magic(shard):
    data = bytearray(shard.with_suffix(".idx").read_bytes())
    data[:8] = b"PICKLE\x00\x00"
    shard.with_suffix(".idx").write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=r"s\.idx: not an llt shard index"):
        ShardReader(shard.with_suffix(".idx"))


def test_rejects_unknown_major_version(shard):
    data = bytearray(shard.with_suffix(".idx").read_bytes())
    assert data[:8] == MAGIC
    data[8:10] = struct.pack("<H", 2)
    shard.with_suffix(".idx").write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=r"s\.idx: shard format version 2\.0"):
        ShardReader(shard)


def test_rejects_bin_size_mismatch(shard):
    b = shard.with_suffix(".bin")
    b.write_bytes(b.read_bytes()[:-2])
    with pytest.raises(ShardFormatError, match=r"s\.bin: .* bytes, but its index says .* \(truncated"):
        ShardReader(shard)


def test_rejects_damaged_header_and_missing_files(shard):
    with pytest.raises(ShardFormatError, match="missing"):
        shard.with_suffix(".bin").rename(shard.with_name("x.bin"))
        ShardReader(shard)
    data = bytearray(shard.with_suffix(".idx").read_bytes())
    data[17:21] = b"}}}}"
    shard.with_suffix(".idx").write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=r"s\.idx: damaged header"):
        ShardReader(shard)
    with pytest.raises(ShardFormatError, match="no such shard index"):
        ShardReader(shard.with_name("nope.idx"))

"""The data side of training: dataset labels, collators, the sampler."""

from __future__ import annotations

import numpy as np
import pytest

from llt.data.collate import PaddedCollator, PaddingFreeCollator, document_positions
from llt.data.dataset import DataError, ShardDataset
from llt.data.sampler import EpochBatchSampler
from tests.conftest import read_corpus


def test_labels_follow_the_stored_loss_mask_and_mask_document_starts(toy_corpora):
    ds = ShardDataset(toy_corpora["qa_packed"])
    stored = read_corpus(toy_corpora["qa_packed"])
    assert len(ds) == len(stored)
    for i in (0, len(ds) // 2, len(ds) - 1):
        ids, mask, starts = stored[i]
        item = ds[i]
        assert item["input_ids"].tolist() == ids
        want = np.where(mask, np.array(ids), -100)
        want[starts] = -100
        assert item["labels"].tolist() == want.tolist()
        assert item["doc_starts"].tolist() == starts
        assert len(starts) > 1  # packed: several q/a pairs per sample


def test_filler_index_gives_the_sample_with_no_trained_label(toy_corpora):
    ds = ShardDataset(toy_corpora["qa"])
    item = ds[~3]
    assert item["input_ids"].tolist() == ds[3]["input_ids"].tolist()
    assert (item["labels"] == -100).all()


def test_dataset_finds_shards_recursively_and_refuses_mixed_tokenizers(toy_corpora, tmp_path):
    both = ShardDataset(toy_corpora["qa"].parent)  # the folder of all three corpora
    assert len(both) == sum(len(ShardDataset(p)) for p in toy_corpora.values())
    from llt.toy import build_tokenizer, toy_records
    from tests.conftest import encode
    build_tokenizer(toy_records(50)[0], tmp_path / "tok300", vocab_size=300)
    _, other = encode(tmp_path, tmp_path / "tok300", [toy_corpora["qa"].parent.parent / "text.jsonl"],
                      corpus_name="bos", encode_type="pretrain")
    with pytest.raises(DataError, match="different tokenizers"):
        ShardDataset([toy_corpora["text"], other])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .idx/.bin shards"):
        ShardDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        ShardDataset(tmp_path / "missing")


def test_dataset_pickles_without_its_memory_map(toy_corpora):
    import pickle

    ds = ShardDataset(toy_corpora["text"])
    before = ds[5]["input_ids"].tolist()
    clone = pickle.loads(pickle.dumps(ds))
    assert all(r._tokens is None for r in clone.readers)
    assert clone[5]["input_ids"].tolist() == before


def test_padding_free_collator_restarts_positions_per_document():
    feats = [{"input_ids": np.arange(10, 17), "labels": np.array([-100, 11, 12, -100, 14, -100, 16]),
              "doc_starts": np.array([0, 3, 5])},
             {"input_ids": np.arange(20, 23), "labels": np.array([-100, 21, 22]), "doc_starts": np.array([0])}]
    b = PaddingFreeCollator(flat=True, flash_kwargs=True)(feats)
    assert b["input_ids"].tolist() == [list(range(10, 17)) + [20, 21, 22]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 2]]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 10]
    assert b["max_length_q"] == 3
    assert "attention_mask" not in b
    # trained tokens, input tokens, causal pairs: docs of 3, 2, 2 and 3 tokens
    assert b["llt_counts"].tolist() == [6, 10, 6 + 3 + 3 + 6]
    rows = PaddingFreeCollator(flat=False, pad_token_id=0)(feats)
    assert rows["input_ids"].tolist() == [list(range(10, 17)), [20, 21, 22, 0, 0, 0, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 0, 1, 2, 3]]
    assert rows["labels"][1].tolist() == [-100, 21, 22, -100, -100, -100, -100]
    assert rows["llt_counts"].tolist() == [6, 10, 18]  # the padding is not counted
    assert document_positions(3, np.array([0])).tolist() == [0, 1, 2]


def test_padded_collator_pads_to_longest_or_to_max_and_refuses_packed_samples():
    feats = [{"input_ids": np.array([1, 2, 3]), "labels": np.array([-100, 2, 3]), "doc_starts": np.array([0])},
             {"input_ids": np.array([4]), "labels": np.array([-100]), "doc_starts": np.array([0])}]
    b = PaddedCollator(pad_token_id=9, pad_to_multiple_of=4)(feats)
    assert b["input_ids"].tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert b["labels"].tolist() == [[-100, 2, 3, -100], [-100, -100, -100, -100]]
    assert PaddedCollator(9, pad_to=6)(feats)["input_ids"].shape == (2, 6)
    packed = [{"input_ids": np.array([1, 2]), "labels": np.array([-100, -100]), "doc_starts": np.array([0, 1])}]
    with pytest.raises(DataError, match="padding_free|--padding free"):
        PaddedCollator(9)(packed)


@pytest.mark.parametrize("n,batch,world", [(103, 4, 1), (103, 4, 3), (7, 2, 4), (64, 8, 2)])
def test_sampler_covers_every_sample_once_per_epoch_across_ranks(n, batch, world):
    for epoch in (0, 1):
        trained, steps = [], set()
        for rank in range(world):
            s = EpochBatchSampler(n, batch, world_size=world, rank=rank, shuffle=True, seed=3)
            s.set_epoch(epoch)
            batches = list(s)
            steps.add(len(batches))
            trained += [i for b in batches for i in b if i >= 0]
        assert steps == {len(s)}  # every rank runs the same number of steps
        assert sorted(trained) == list(range(n))


def test_sampler_order_depends_on_seed_and_epoch_not_on_world_size():
    def global_order(world, epoch, seed=5):
        per_rank = []
        for rank in range(world):
            s = EpochBatchSampler(40, 2, world_size=world, rank=rank, seed=seed)
            s.set_epoch(epoch)
            per_rank.append(list(s))
        out = []
        for step in range(len(per_rank[0])):
            for k in range(2):
                out += [b[step][k] for b in per_rank if len(b[step]) > k]
        return out

    a = EpochBatchSampler(40, 1, seed=5).order(0).tolist()
    assert sorted(a) == list(range(40))
    assert EpochBatchSampler(40, 1, seed=5).order(1).tolist() != a
    assert EpochBatchSampler(40, 1, seed=6).order(0).tolist() != a
    assert EpochBatchSampler(40, 1, shuffle=False).order(0).tolist() == list(range(40))
    for world in (1, 2, 4):
        assert sorted(global_order(world, 0)) == list(range(40))


def test_sampler_resume_yields_cheap_placeholders_then_the_exact_next_batches():
    full = EpochBatchSampler(50, 3, world_size=2, rank=1, seed=1)
    full.set_epoch(2)
    want = list(full)
    s = EpochBatchSampler(50, 3, world_size=2, rank=1, seed=1)
    s.set_epoch(2)
    s.resume_at(2, 5)
    got = list(s)
    assert got[:5] == [None] * 5 and got[5:] == want[5:]
    assert list(s) == want  # only the resumed epoch is shortened


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permutation_is_a_seeded_bijection_with_an_inverse(n):
    from llt.data.permutation import Permutation

    p = Permutation(n, [3, 1])
    values = p(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))
    assert np.array_equal(p.inverse(values), np.arange(n))
    assert np.array_equal(values, Permutation(n, [3, 1])(np.arange(n)))  # the key decides
    if n >= 7:
        assert not np.array_equal(values, Permutation(n, [3, 2])(np.arange(n)))
        assert not np.array_equal(values, np.arange(n))
    with pytest.raises(IndexError):
        p(np.array([n]))


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_ranks_memory_does_not_grow_with_the_number_of_samples(tmp_path):
    """Two corpora of 1.5M samples: the held-out split, the weighted mix, a resumed
    epoch's batches and the eval set cost under 2 bytes per sample (numpy's allocations
    are traced; what they cost is a few MB of fixed-size temporaries)."""
    from types import SimpleNamespace

    from llt.data.run_data import build_data
    from llt.shards.synthetic import write_synthetic_corpus

    n = 1_500_000
    for name in ("a", "b"):
        write_synthetic_corpus(tmp_path / name, n, 2, 300, "fp", shard_samples=n // 2, seed=len(name))
    for weights in ("", ":0.5"):
        flags = SimpleNamespace(data_path=[f"{tmp_path / 'a'}{weights}", f"{tmp_path / 'b'}{weights}"],
                                eval_data_path=None, eval_split=0.1, shuffle_data=True)
        seen = {}

        def run():
            data = build_data(flags, seed=1)
            s = EpochBatchSampler(data.plan, 8, world_size=2, rank=1, seed=1)
            s.set_epoch(3)
            s.resume_at(3, 100_000)
            batches = iter(s)
            for _ in range(100_000):
                next(batches)
            seen["batches"] = [next(batches) for _ in range(5)]
            seen["eval"] = [data.eval_set[i]["input_ids"].tolist() for i in (0, len(data.eval_set) - 1)]
            seen["eval_size"] = len(data.eval_set)

        peak = _peak_bytes(run)
        # The goal is 2 bytes a sample; one int64 array of the samples would be 8.
        assert peak < 2 * (2 * n), f"{peak:,} bytes traced for {2 * n:,} samples"
        assert seen["eval_size"] == 2 * n // 10 and all(len(b) == 8 for b in seen["batches"])


def test_verification_memory_is_flat_in_the_number_of_samples(tmp_path):
    from llt.shards.verify import verify_path
    from llt.shards.synthetic import write_synthetic_corpus

    write_synthetic_corpus(tmp_path / "big", 3_000_000, 2, 300, "fp", shard_samples=3_000_000)
    problems = []
    peak = _peak_bytes(lambda: problems.extend(verify_path(tmp_path / "big")))
    assert problems == []
    assert peak < 32 << 20, f"{peak:,} bytes to verify 3M samples"  # 8 bytes per sample would be 24 MB


def test_a_checkpoint_of_the_earlier_sample_order_is_refused_with_the_reason(tmp_path):
    from llt.errors import ConfigError
    from llt.train.resume import RunShape, resume_position

    now = RunShape(100, 1, 4, 1, True, 0, [], None)
    saved = {k: v for k, v in now.recorded().items() if k != "order"}
    saved.update(epoch=0, step=3, samples_seen_in_epoch=12)
    with pytest.raises(ConfigError, match="sample order .*version 1.*--model_path"):
        resume_position(tmp_path, saved, now, deepspeed=False)
    assert resume_position(tmp_path, {**saved, "order": now.order}, now, deepspeed=False) == (0, 3)

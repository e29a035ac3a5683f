"""`llt encode --dataset` (datasets.load_dataset, streamed or not) and fsspec URLs in
`--input_path`: the same data gives the same shards whichever way it arrives."""

from __future__ import annotations

import pytest

from llt.encode.sources import SourceError
from llt.toy import toy_records
from tests.conftest import encode, read_corpus


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    """A folder laid out like a Hub dataset repository: two train Parquet shards, a test
    shard, and a README card whose `configs` name the splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path_factory.mktemp("hub") / "toy_dataset"
    (repo / "data").mkdir(parents=True)
    texts, qa = toy_records(240, seed=7)
    rows = [{"text": t, "q": r["q"], "a": r["a"]} for t, r in zip(texts, qa)]
    for i in range(2):
        pq.write_table(pa.Table.from_pylist(rows[i * 120:(i + 1) * 120]),
                       repo / "data" / f"train-0000{i}-of-00002.parquet", row_group_size=50)
    pq.write_table(pa.Table.from_pylist(rows[:10]), repo / "data" / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: test\n    path: data/test-*\n---\n# A toy dataset\n")
    return repo


def _flat(corpus):
    return [(ids, mask.tolist(), docs) for ids, mask, docs in read_corpus(corpus)]


@pytest.mark.parametrize("encode_type,workers", [("pretrain", 1), ("qa", 2)])
def test_plain_files_dataset_and_streaming_write_identical_shards(tmp_path, tiny_tok_dir, hub_repo,
                                                                  encode_type, workers):
    files = sorted((hub_repo / "data").glob("train-*.parquet"))
    kw = dict(encode_type=encode_type, num_workers=workers, max_length=64)
    got = {
        "files": encode(tmp_path / "files", tiny_tok_dir, files, **kw),
        "dataset": encode(tmp_path / "dataset", tiny_tok_dir, dataset=str(hub_repo), **kw),
        "streaming": encode(tmp_path / "stream", tiny_tok_dir, dataset=str(hub_repo), streaming=True, **kw),
        "url": encode(tmp_path / "url", tiny_tok_dir, [f"file://{hub_repo}/data/train-*.parquet"], **kw),
    }
    want = _flat(got["files"][1])
    assert len(want) > 10 and sum(len(s[0]) for s in want) == got["files"][0]["stats"]["tokens"]
    for way, (manifest, corpus) in got.items():
        assert _flat(corpus) == want, way
        assert manifest["stats"]["records"] == 240, way
    if workers > 1:  # the stream was split by its two files, one a worker
        assert len(got["streaming"][0]["shards"]) == 2


def test_split_and_config_are_passed_and_a_missing_split_lists_the_others(tmp_path, tiny_tok_dir, hub_repo):
    manifest, _ = encode(tmp_path / "a", tiny_tok_dir, dataset=str(hub_repo), split="test", encode_type="qa")
    assert manifest["stats"]["records"] == 10
    with pytest.raises(SourceError, match=r"no split 'validation'; available: .*train.*test|no split 'validation'; available: .*test.*train"):
        encode(tmp_path / "b", tiny_tok_dir, dataset=str(hub_repo), split="validation", encode_type="qa")


@pytest.mark.parametrize("streaming", [False, True])
def test_a_missing_field_names_the_dataset_and_lists_the_columns(tmp_path, tiny_tok_dir, hub_repo, streaming):
    from llt.errors import LltError

    with pytest.raises(LltError, match=r"--dataset .*toy_dataset.*\[train\].*no column 'prompt' \(columns: text, q, a\)"):
        encode(tmp_path, tiny_tok_dir, dataset=str(hub_repo), encode_type="qa", q_field="prompt",
               streaming=streaming)


def test_a_url_without_its_filesystem_package_names_the_package(tmp_path, tiny_tok_dir):
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed here")
    except ImportError:
        pass
    with pytest.raises(SourceError, match=r"s3://bucket/x.jsonl: reading s3:// needs the s3fs package"):
        encode(tmp_path, tiny_tok_dir, ["s3://bucket/x.jsonl"])


def test_dataset_flags_need_dataset(tmp_path, tiny_tok_dir):
    from llt.errors import LltError

    with pytest.raises(LltError, match="--data_files, --dataset_config and --revision apply to --dataset"):
        encode(tmp_path, tiny_tok_dir, [tmp_path], data_files=["x.jsonl"])

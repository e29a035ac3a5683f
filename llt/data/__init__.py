"""Encoding user data into token shards, and reading them back.

Modules, in the order data flows through them: `sources` (records from files or a
`data_loader.py`), `tokenizer` (loading, fingerprint), `samples` (records -> token
samples with loss spans and document starts), `packing` (`--merge_data`), `format` (the
one shard writer and reader), `manifest` (`summary.json`), `encode` (the `llt encode`
job), `inspect` (`llt inspect` / `llt verify`).
"""

from llt.data.format import SampleBatch, ShardFormatError, ShardReader, ShardWriter
from llt.data.manifest import find_corpora, read_manifest

__all__ = ["SampleBatch", "ShardFormatError", "ShardReader", "ShardWriter", "find_corpora",
           "read_manifest"]

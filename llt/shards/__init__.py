"""Stage 2, the on-disk contract between the encoder and the trainer (docs/format.md).

`format` (constants, the `.idx` header, token dtypes), `writer` (`ShardWriter`), `reader`
(`ShardReader`, memory-mapped), `fingerprint` (the tokenizer fingerprint headers carry),
`manifest` (`summary.json`, and which shards a path names), `verify` (`llt verify`) and
`inspect` (`llt inspect`).
"""

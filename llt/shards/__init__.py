"""Stage 2, the on-disk contract between the encoder and the trainer (docs/format.md).

`format` (constants, the `.idx` header, token dtypes), `writer` (`ShardWriter`), `reader`
(`ShardReader`, memory-mapped), `fingerprint` (the tokenizer fingerprint headers carry),
`manifest` (`summary.json`, and which shards a path names), `verify` (`llt verify`),
`inspect` (`llt inspect`) and `synthetic` (random-id corpora of any size, for measuring).
"""

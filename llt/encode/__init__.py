"""Stage 1, `llt encode`: user records -> token samples with exact loss spans -> shards.

In the order data flows through them: `config` (`EncodeArgs`, every flag), `sources`
(records from JSONL/JSON/Parquet/CSV files, HF `datasets` folders or a `data_loader.py`),
`hub` (`--dataset` through `datasets.load_dataset`, streamed or not, and fsspec URLs),
`tokenizer_info` (what the shards record about the tokenizer), `builders` (records ->
samples, one builder per encode type: pretrain, qa, chat, preference), `chat` (the chat
encoder: the turn rule and what makes it fast), `sample` (one sample as arrays, and
batches <-> lists of samples), `packing` (`--merge_data`), `sink` (a worker's rolling
shard output), `worker` (one encoder process), `job` (start workers, collect, finish) and
`summary` (the manifest written last, and the printed summary).
"""

"""Stage 1, `llt encode`: user records -> token samples with exact loss spans -> shards.

In the order data flows through them: `config` (`EncodeArgs`, every flag), `sources`
(records from JSONL/JSON/Parquet/CSV files, HF `datasets` folders or a `data_loader.py`),
`hub` (`--dataset` through `datasets.load_dataset`, streamed or not, and fsspec URLs),
`tokenizer_info` (what the shards record about the tokenizer), `pieces` (one sample, and
batches <-> lists of samples), `samples` (records -> samples: pretrain, qa, chat,
preference), `preference` (TRL's preference records -> pair samples), `messages` (chat
records checked and brought to one shape: tool calls, reasoning, text parts), `jinja_env`
(the jinja environment transformers renders chat templates in, without importing
transformers), `chat_template` (a template compiled, fitted and rendered; the rule for the
text a turn generates), `chat` (a conversation -> samples whose trained tokens are what the
model generates, one per turn where history is rewritten), `joins` (which prompts and turns
go to the tokenizer as one text, exactly, and how their tokens split back), `check` (`llt
inspect --check`: sampled records re-encoded against `apply_chat_template`), `packing`
(`--merge_data`), `sink` (a worker's rolling shard output), `worker` (one encoder process),
`job` (start workers, collect, finish) and `summary` (the manifest written last, and the
printed summary).
"""

"""Training on llt shards: `config` (the four argument dataclasses), `parse` (YAML +
flags), `model` (loading, added tokens, LoRA), `collators`, `checks`, `trainer`
(`LltTrainer`), `callbacks` (throughput, loss report, save schedule), `sft` (the
recipe body behind `recipes/sft.py` and `llt train`)."""

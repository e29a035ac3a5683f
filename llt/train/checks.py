"""Start-up checks: the data must fit the model before the first step, not an hour in."""

from __future__ import annotations

from llt.data.tokenizer import vocab_fingerprint
from llt.train.config import ConfigError


def embedding_rows(model) -> int:
    """Rows of the input embedding; read from the module, since under ZeRO-3 the weight
    is partitioned and its local shape is empty."""
    emb = model.get_input_embeddings()
    return int(getattr(emb, "num_embeddings", None) or emb.weight.shape[0])


def check_data_fits(dataset, tokenizer, model, data_args, new_ids) -> None:
    """Shards from the model's tokenizer, ids inside its embedding table."""
    rows = embedding_rows(model)
    if dataset.vocab_size > rows:
        raise ConfigError(f"--data_path: shards use a {dataset.vocab_size:,}-token vocabulary but "
                          f"--model_path has {rows:,} embedding rows; ids would index past the table")
    if dataset.fingerprint:
        prints = {vocab_fingerprint(tokenizer)}
        if new_ids:
            # Shards may be encoded with the tokenizer before --add_tokens, or with one
            # that already holds the added tokens; both give the same ids.
            from transformers import AutoTokenizer
            prints.add(vocab_fingerprint(AutoTokenizer.from_pretrained(tokenizer.name_or_path)))
        if dataset.fingerprint not in prints:
            raise ConfigError(f"--data_path {dataset.paths[0].parent}: encoded with a different tokenizer "
                              f"than {tokenizer.name_or_path} (vocabulary fingerprints differ); "
                              "re-encode with this model's tokenizer or pass --tokenizer_path")

"""Start-up checks: the data must fit the model before the first step, not an hour in."""

from __future__ import annotations

from llt.data.tokenizer import vocab_fingerprint
from llt.train.config import ConfigError


def verify_data(data_paths: list[str]) -> None:
    """`llt verify` on every --data_path before training: a truncated or changed file (size
    or xxh3 checksum against summary.json), a damaged header, or an id outside the
    vocabulary stops the run now rather than hours in."""
    from llt.data.dataset import find_shards
    from llt.data.inspect import verify_path
    from llt.data.manifest import MANIFEST

    shards = find_shards(data_paths)
    corpora = sorted({s.parent for s in shards if (s.parent / MANIFEST).is_file()})
    lone = [s for s in shards if s.parent not in corpora]  # no manifest: no checksums to compare
    problems = [p for target in corpora + lone for p in verify_path(target)]
    if problems:
        shown = "\n  - ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ConfigError(f"--data_path: the shards failed verification (see `llt verify`; "
                          f"--verify_data false skips this):\n  - {shown}{more}")


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

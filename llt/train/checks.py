"""Start-up checks: the data must be intact and fit the model before the first step, not an
hour in."""

from __future__ import annotations

import logging

from llt.errors import ConfigError, DataError
from llt.shards.fingerprint import vocab_fingerprint
from llt.model.loading import embedding_rows


def check_world(args) -> None:
    """The launcher's world (WORLD_SIZE/RANK, the process group) and HF's view of it
    (`args.world_size`, `args.process_index`, `args.should_save`) must agree: if they do
    not, every process trains every sample and all of them save into the same folder."""
    import os

    import torch.distributed as dist

    launcher = {"world size": int(os.environ.get("WORLD_SIZE", "1") or 1),
                "rank": int(os.environ.get("RANK", "0") or 0)}
    if dist.is_available() and dist.is_initialized():
        launcher = {"world size": dist.get_world_size(), "rank": dist.get_rank()}
    if getattr(args, "cpu_world", False) and args.process_index == 0:
        logging.getLogger("llt").warning(
            "llt: no GPU here: the %d launched processes train on the CPU (gloo), as with --use_cpu",
            launcher["world size"])
    hf = {"world size": args.world_size, "rank": args.process_index}
    # --save_on_each_node (node-local disks, llt.train.preflight.check_storage): each node's first process saves
    saver = (getattr(args, "local_process_index", 0) == 0 if getattr(args, "save_on_each_node", False)
             else args.process_index == 0)
    if launcher != hf or args.should_save != saver:
        raise ConfigError(
            f"the launcher started world size {launcher['world size']}, this is rank {launcher['rank']}; "
            f"the training arguments see world size {hf['world size']}, rank {hf['rank']}, should_save "
            f"{args.should_save}. Training would repeat every sample on every process; launch with "
            "--use_cpu on a machine without a GPU, or check the launcher's device settings")


def verify_on_local_main(data_paths: list[str], args) -> None:
    """`llt verify` on every shard under `data_paths`, once per machine: local rank 0
    reads and hashes the files while the node's other ranks wait (8 ranks would otherwise
    read the corpus 8 times); every rank then raises the same error if a check failed.

    A truncated or changed file (size or xxh3 checksum against summary.json), a damaged
    header, or an id outside the vocabulary stops the run now rather than hours in."""
    import torch.distributed as dist

    from llt.shards.verify import verify_corpora

    problems = verify_corpora(data_paths) if args.local_process_index == 0 else []
    if dist.is_available() and dist.is_initialized():
        # A collective: it is also where the other ranks wait for the verification.
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, problems)
        problems = sorted({p for ps in gathered for p in ps})
    if problems:
        shown = "\n  - ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(f"--data_path: the shards failed verification (see `llt verify`; "
                        f"--verify_data false skips this):\n  - {shown}{more}")


def check_data_fits(dataset, tokenizer, model, new_ids) -> None:
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


def adopt_chat_template(tokenizer, data) -> str | None:
    """Give the run's tokenizer the chat template its chat corpora were rendered with.

    HF saves the tokenizer, template included, with every checkpoint, so export and generate
    then prompt the model exactly as it was trained (`llt encode --chat_template FILE`
    records the file's text in summary.json). Corpora rendered with different templates
    are refused: the model could not be prompted like both. Returns the template adopted.
    """
    import json
    from pathlib import Path

    templates = {}
    for path in sorted({p for c in data.manifest()["corpora"] for p in c["encode_manifests"]}):
        chat = json.loads(Path(path).read_text()).get("chat")
        if chat:
            templates.setdefault(chat["template"], []).append(str(Path(path).parent))
    if len(templates) > 1:
        raise ConfigError("the chat corpora were rendered with different chat templates ("
                          + "; ".join(", ".join(v) for v in templates.values())
                          + "); encode them with one --chat_template so the model is prompted one way")
    if not templates:
        return None
    (template,) = templates
    if template != tokenizer.chat_template:
        logging.getLogger("llt").info("chat template: the one the corpora were encoded with (%s), saved with the run's "
                    "tokenizer", next(iter(templates.values()))[0])
        tokenizer.chat_template = template
    return template



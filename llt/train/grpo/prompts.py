"""GRPO's prompts, read directly from the sources `llt encode` reads and rendered as at
inference.

Prompts do not go through shards: a prompt set is small (thousands of records, read in
seconds), the reward functions need each record's other fields whole (an answer, test
cases, metadata), which shards do not hold, and the prompt must be rendered with the chat
template's generation prompt, which is the tokenizer's business at run time. So the records
are read with the encoder's readers (`llt.encode.sources`: JSONL, JSON, Parquet, CSV/TSV, a
HF `datasets` folder, `--dataset`, a `data_loader()`), each kept with the text that names it
in errors ("prompts.jsonl: line 12").

A record's `--prompt_field` is a string (tokenized as is, as TRL does: the tokenizer's own
special tokens) or a list of chat messages (rendered with `apply_chat_template(...,
add_generation_prompt=True)`, as TRL and inference render it). A prompt that is missing,
empty, of another type, or longer than `--max_prompt_length` tokens stops the run before
the model is loaded, naming the record.
"""

from __future__ import annotations

import itertools

import numpy as np

from llt.errors import DataError


class PromptSet:
    """The prompts of a run: `records[i]` (the whole record), `prompt_ids[i]` (its rendered
    token ids) and `where[i]` (how errors name it). Indexing returns the index: the loader
    yields lists of prompt numbers, which the trainer looks up."""

    n_corpora = 1  # what the shared build asks of a training set

    def __init__(self, records: list[dict], prompt_ids: list[list[int]], where: list[str], sources: list[str]):
        self.records, self.prompt_ids, self.where, self.sources = records, prompt_ids, where, sources
        self.conversational = bool(records) and isinstance(records[0].get("__prompt__"), list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> int:
        return int(i)

    def fields(self, indices: list[int], prompt_field: str) -> dict[str, list]:
        """The records' other fields as keyword lists (TRL's convention), one entry per index."""
        keys = [k for k in self.records[indices[0]] if k not in (prompt_field, "__prompt__")]
        return {k: [self.records[i].get(k) for i in indices] for k in keys}

    def prompts(self, indices: list[int]) -> list:
        return [self.records[i]["__prompt__"] for i in indices]

    def identity(self) -> list:
        """What identifies the prompt set for resume: its size and a hash of every prompt's ids."""
        import xxhash

        h = xxhash.xxh3_64()
        for ids in self.prompt_ids:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(b"|")
        return [len(self), h.hexdigest()]

    def manifest(self) -> dict:
        lengths = np.array([len(p) for p in self.prompt_ids])
        return {"prompts": len(self), "sources": self.sources, "conversational": self.conversational,
                "prompt_tokens": {"mean": float(lengths.mean()), "max": int(lengths.max())},
                "identity": self.identity()}


def read_records(args) -> tuple[list[tuple[object, str]], list[str]]:
    """(record, where) for every record of `--input_path`, `--dataset` and `--data_loader_path`,
    in that order; and the sources' names."""
    from llt.encode.hub import DatasetSpec, dataset_batches, dataset_parts
    from llt.encode.sources import find_inputs, part_batches, plan_parts, stream_records

    found = find_inputs(args.input_path) if args.input_path else []
    extra = []
    if args.dataset:
        spec = DatasetSpec(args.dataset, args.dataset_config, args.split, None, tuple(args.data_files), False)
        units, _ = dataset_parts(spec, 1)
        extra = units
    out = []
    for group in plan_parts([i for i in found if i[0] in ("jsonl", "parquet", "hf")], 1, args.split, extra):
        for part in group:
            columns = _all_columns(part)
            batches = dataset_batches(part, 512, columns) if part.kind == "dataset" \
                else part_batches(part, 512, columns)
            for records, where in batches:
                out += [(r, where(k)) for k, r in enumerate(records)]
    out += list(stream_records(found, args.data_loader_path))
    sources = [p for _, p in found] + ([args.dataset] if args.dataset else []) + \
        ([args.data_loader_path] if args.data_loader_path else [])
    return out, sources


def _all_columns(part) -> list[str]:
    """Every column of a columnar input (the reward functions may read any of them)."""
    if part.kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(part.path).schema_arrow.names)
    if part.kind == "hf":
        from llt.encode.sources import _hf_dataset

        return list(_hf_dataset(part.path, part.split).column_names)
    if part.kind == "dataset":
        return list(part.dataset.load().column_names)
    return []  # JSONL: whole records


def render(tokenizer, prompt, where: str, field: str) -> list[int]:
    """The prompt's token ids as generation sees them."""
    if isinstance(prompt, str):
        if not prompt:
            raise DataError(f"{where}: field {field!r} is empty")
        return list(tokenizer(text=prompt)["input_ids"])
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError(f"{where}: field {field!r} holds chat messages but the tokenizer has no chat "
                            "template; give the model's tokenizer one, or give prompts as strings")
        try:
            out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        except Exception as e:  # noqa: BLE001 - the template's error, named with the record
            raise DataError(f"{where}: the chat template cannot render field {field!r}: "
                            f"{type(e).__name__}: {e}") from None
        return list(out["input_ids"])
    kind = "an empty list" if prompt == [] else type(prompt).__name__
    raise DataError(f"{where}: field {field!r} is {kind}; a prompt is a string or a list of chat messages "
                    "({'role': ..., 'content': ...})")


def load_prompts(args, tokenizer) -> PromptSet:
    """The run's `PromptSet` from `GrpoArguments` `args`; a `DataError` naming the first bad record."""
    records, sources = read_records(args)
    if not records:
        raise DataError(f"no prompt records in {', '.join(sources)}")
    kept, ids, where = [], [], []
    for rec, at in records:
        if not isinstance(rec, dict):
            raise DataError(f"{at}: a record is a JSON object with a {args.prompt_field!r} field, "
                            f"got {type(rec).__name__}")
        if args.prompt_field not in rec:
            present = ", ".join(itertools.islice(map(str, rec), 8))
            raise DataError(f"{at}: no field {args.prompt_field!r} (fields: {present}); set --prompt_field")
        prompt_ids = render(tokenizer, rec[args.prompt_field], at, args.prompt_field)
        if len(prompt_ids) > args.max_prompt_length:
            raise DataError(f"{at}: the prompt is {len(prompt_ids)} tokens, over --max_prompt_length "
                            f"{args.max_prompt_length}; raise it or shorten the prompt (prompts are not cut)")
        kept.append({**rec, "__prompt__": rec[args.prompt_field]})
        ids.append(prompt_ids)
        where.append(at)
    return PromptSet(kept, ids, where, sources)

"""`EncodeArgs`: every `llt encode` flag, typed and documented where it is declared.

The seed's flags keep their names and meaning (`--tokenizer_path`, `--data_loader_path`,
`--corpus_name`, `--encode_type`, `--output_path`, `--max_length`, `--merge_data`,
`--save_dtype`, `--tokens_per_file`); the rest are new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llt.errors import LltError


def _help(text: str, **kw) -> dict:
    return {"metadata": {"help": text}, **kw}


@dataclass
class EncodeArgs:
    """Arguments of `llt encode`."""

    tokenizer_path: str = field(**_help("HF tokenizer folder (tokenizer.json or slow files)."))
    output_path: str = field(**_help("Folder under which `<corpus_name>/` is written."))
    corpus_name: str = field(**_help(
        "Name of this corpus: shards are written as `<output_path>/<corpus_name>/<corpus_name>_<i>.bin/.idx`."))
    data_loader_path: str | None = field(default=None, **_help(
        "A Python file defining `data_loader()`, a generator yielding a `str` per document "
        "(pretrain), `{\"q\": str, \"a\": str}` (qa) or `{\"messages\": [...]}` (chat)."))
    input_path: list[str] = field(default_factory=list, **_help(
        "Data files or folders: .jsonl/.json/.parquet/.csv/.tsv, or a HF `datasets` folder "
        "saved with save_to_disk. Several may be given. fsspec URLs (s3://, gs://, hf://, "
        "file://; globs allowed) are read through `datasets` where the filesystem package is installed."))
    dataset: str | None = field(default=None, **_help(
        "Read with datasets.load_dataset: a Hub dataset id, a local folder laid out like a Hub "
        "dataset repository, or a builder name (json, parquet, csv, text) with --data_files."))
    dataset_config: str | None = field(default=None, **_help("The --dataset configuration (subset) name."))
    data_files: list[str] = field(default_factory=list, **_help("Data files (or globs) for --dataset."))
    revision: str | None = field(default=None, **_help("The --dataset revision: a branch, tag or commit."))
    streaming: bool = field(default=False, **_help(
        "Stream --dataset (and URL inputs) instead of preparing it in the datasets cache; the "
        "workers split it by the dataset's own shards (files)."))
    encode_type: Literal["pretrain", "qa", "chat", "preference", "kto"] = field(default="pretrain", **_help(
        "pretrain: text, loss on every token; qa: question/answer pairs, loss on the answer "
        "and EOS; chat: multi-turn `messages`, loss on assistant turns; preference: "
        "prompt/chosen/rejected pairs (TRL's formats), one sample per pair, loss spans on the "
        "completions (for recipes/dpo.py and recipes/reward.py); kto: prompt/completion/label "
        "examples (TRL's unpaired format), the label stored with each (for recipes/kto.py)."))
    max_length: int = field(default=2048, **_help(
        "Tokens per sample: pretrain text is cut into samples of this length; longer qa/chat "
        "samples are handled by --overlong; --merge_data packs up to this length."))
    merge_data: bool = field(default=False, **_help(
        "Pack qa/chat samples into max_length bins (best-fit decreasing); document "
        "boundaries are kept so packed samples never attend to each other. pretrain text is "
        "always packed (documents joined with EOS and cut at max_length)."))
    save_dtype: Literal["auto", "int16", "int32", "uint16", "uint32"] = field(default="auto", **_help(
        "Token id width on disk. auto: 2 bytes when every id fits in uint16, else 4. "
        "int16/int32 are the seed's names for 2 and 4 bytes."))
    tokens_per_file: float = field(default=5e8, **_help(
        "Roll to a new shard once a shard holds this many tokens (a sample never spans "
        "two shards). Each worker writes its own shards. Accepts 5e8."))
    text_field: str = field(default="text", **_help("Field holding the text (pretrain)."))
    q_field: str = field(default="q", **_help("Field holding the question (qa)."))
    a_field: str = field(default="a", **_help("Field holding the answer (qa)."))
    messages_field: str = field(default="messages", **_help(
        "Field holding the list of {role, content} messages (chat)."))
    prompt_field: str = field(default="prompt", **_help(
        "preference and kto: field holding the prompt (a string or messages; absent from a pair: "
        "the messages the two completions share)."))
    chosen_field: str = field(default="chosen", **_help("preference: field holding the chosen completion."))
    rejected_field: str = field(default="rejected", **_help("preference: field holding the rejected completion."))
    margin_field: str | None = field(default=None, **_help(
        "preference: a field holding each pair's margin (a number; TRL's `margin`), stored with the pair: "
        "llt reward then trains -log σ(r_chosen - r_rejected - margin). Every record must have it."))
    completion_field: str = field(default="completion", **_help("kto: field holding the completion."))
    label_field: str = field(default="label", **_help(
        "kto: field holding the label, a boolean: true for a desirable completion, false for an undesirable one."))
    tools_field: str = field(default="tools", **_help(
        "Field holding a chat record's tool schemas (a list of JSON schemas, or that list as "
        "a JSON string), passed to the chat template as `tools`."))
    chat_template: str | None = field(default=None, **_help(
        "A Jinja chat template file to encode with instead of the tokenizer's own (e.g. one that "
        "keeps reasoning the published template drops). It is recorded in summary.json and "
        "saved with every run trained on the corpus, so export and generate use it too."))
    chat_template_kwargs: str | None = field(default=None, **_help(
        "Keyword arguments for the chat template as a JSON object, e.g. "
        "'{\"enable_thinking\": false}'. Recorded in summary.json."))
    chat_date: str | None = field(default=None, **_help(
        "The date (YYYY-MM-DD) that date-stamped templates (Llama 3.2, gpt-oss) write; default: "
        "today, recorded in summary.json. Give it to make an encode reproducible."))
    train_turns: Literal["all", "last"] = field(default="all", **_help(
        "chat: train every assistant turn, or only each conversation's last one (then a "
        "conversation is always one sample, even with templates that rewrite history)."))
    unrendered: Literal["error", "skip"] = field(default="error", **_help(
        "chat: a message whose content, reasoning or tool calls the template does not render "
        "is an error naming the record; `skip` skips such conversations and counts them."))
    split: str = field(default="train", **_help("Split to read from --dataset or a HF DatasetDict folder."))
    qa_template: Literal["plain", "chat"] = field(default="plain", **_help(
        "plain: question ids + answer ids + EOS (the seed's format); chat: render each pair "
        "as a user/assistant conversation with the tokenizer's chat template."))
    overlong: Literal["drop", "truncate"] = field(default="drop", **_help(
        "qa/chat samples longer than max_length: drop them, or keep the first max_length "
        "tokens (dropped anyway if no trained token remains). Preference pairs (both sides "
        "together must fit max_length): drop, or cut each side to its first max_length // 2 "
        "tokens (dropped if a side keeps no completion token). All are counted."))
    strict: bool = field(default=False, **_help(
        "Stop on empty records (empty text, empty answer, no assistant turn) instead of "
        "skipping and counting them."))
    num_workers: int = field(default=0, **_help("Worker processes; 0 = one per available core."))
    batch_size: int = field(default=1000, **_help("Records tokenized per batch call."))
    overwrite: bool = field(default=False, **_help(
        "Replace a finished corpus of the same name (it is removed only once the new one "
        "is complete)."))

    @property
    def columns(self) -> list[str]:
        """The record fields a table input must have ("name?": read when present)."""
        return {"pretrain": [self.text_field], "chat": [self.messages_field, self.tools_field + "?"],
                "preference": [self.prompt_field + "?", self.chosen_field, self.rejected_field,
                               self.tools_field + "?"] + ([self.margin_field] if self.margin_field else []),
                "kto": [self.prompt_field, self.completion_field, self.label_field, self.tools_field + "?"]}.get(self.encode_type, [self.q_field, self.a_field])

    @property
    def uses_chat_template(self) -> bool:
        return self.encode_type == "chat" or (self.encode_type == "qa" and self.qa_template == "chat")

    def __post_init__(self) -> None:
        if not self.data_loader_path and not self.input_path and not self.dataset:
            raise LltError("give the data with --data_loader_path FILE.py, --input_path FILE... or --dataset NAME")
        if (self.data_files or self.dataset_config or self.revision) and not self.dataset:
            raise LltError("--data_files, --dataset_config and --revision apply to --dataset; give it")
        if self.max_length < 1:
            raise LltError(f"--max_length must be positive, got {self.max_length}")
        if self.tokens_per_file < 1:
            raise LltError(f"--tokens_per_file must be positive, got {self.tokens_per_file}")
        if not self.corpus_name or "/" in self.corpus_name or self.corpus_name.startswith("."):
            raise LltError(f"--corpus_name {self.corpus_name!r} must be a plain folder name")
        if self.chat_template_kwargs is not None:
            import json

            try:
                kwargs = json.loads(self.chat_template_kwargs)
            except json.JSONDecodeError as e:
                raise LltError(f"--chat_template_kwargs is not valid JSON: {e.msg}") from None
            if not isinstance(kwargs, dict):
                raise LltError("--chat_template_kwargs must be a JSON object, e.g. '{\"enable_thinking\": false}'")
        if self.chat_date is not None:
            import datetime

            try:
                datetime.date.fromisoformat(self.chat_date)
            except ValueError:
                raise LltError(f"--chat_date {self.chat_date!r} is not a date like 2026-01-31") from None
        if self.margin_field and self.encode_type != "preference":
            raise LltError(f"--margin_field applies to --encode_type preference (pairs), not {self.encode_type}")
        if self.num_workers < 0 or self.batch_size < 1:
            raise LltError("--num_workers must be >= 0 and --batch_size >= 1")

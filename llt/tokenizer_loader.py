"""Loading a HF tokenizer from a local folder, fast where it can be.

`load_tokenizer` returns a `RawTokenizer` (built on the `tokenizers` library alone) when
the folder's `tokenizer.json` says everything: that import does not pull in torch or
transformers (importing transformers costs 0.55 s, AutoTokenizer +190 MB RSS), which keeps
the encoder quick to start and its workers small. Its chat template, named special tokens
and added-token flags are read from the folder's files as transformers 5 reads them
(`tests/test_tokenizer.py` compares each). Otherwise, or when asked for, it loads the
transformers tokenizer. Used by `llt encode` and `llt inspect`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llt.errors import LltError


class TokenizerError(LltError, ValueError):
    """The tokenizer cannot do what the encode asks. The message names the path."""


class RawTokenizer:
    """The part of a HF fast tokenizer the encoder uses, built on `tokenizers` alone.

    Loads without importing transformers (0.55 s, and 0.25 s more to build its tokenizer
    class for Qwen2.5). The ids come from the same `tokenizer.json` pipeline, and
    `tests/test_tokenizer.py` checks that every fact recorded about it (vocabulary size,
    EOS, BOS prefix, fingerprint, chat template, named special tokens, hard special
    tokens) equals the transformers tokenizer's.
    """

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.eos_token = _config_token(path, "eos_token")
        self.eos_token_id = (self.backend_tokenizer.token_to_id(self.eos_token)
                             if self.eos_token else None)
        # What a chat template is rendered with (`apply_chat_template` passes these).
        self.special_tokens_map = {name: token for name in _NAMED_TOKENS
                                   if (token := _config_token(path, name)) is not None}
        self.chat_template = _chat_template(path)
        self.added_tokens_decoder = self.backend_tokenizer.get_added_tokens_decoder()

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def decode(self, ids: list[int]) -> str:
        return self.backend_tokenizer.decode(ids, skip_special_tokens=False)


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _config_token(path: Path, name: str) -> str | None:
    """A special token as tokenizer_config.json or special_tokens_map.json declare it."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        value = _read_json(path / file).get(name)
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        if value:
            return value
    return None


_NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _chat_template(path: Path) -> str | dict | None:
    """The folder's chat template as transformers 5 loads it: `chat_template.jinja` (and
    named ones in `additional_chat_templates/`) before `tokenizer_config.json`'s `chat_template`."""
    named = {f.stem: f.read_text(encoding="utf-8")
             for f in sorted((path / "additional_chat_templates").glob("*.jinja"))}
    if (path / "chat_template.jinja").is_file():
        default = (path / "chat_template.jinja").read_text(encoding="utf-8")
        return {"default": default, **named} if named else default
    if named:
        return named
    value = _read_json(path / "tokenizer_config.json").get("chat_template")
    if isinstance(value, list):  # [{"name": ..., "template": ...}], as transformers reads it
        return {t["name"]: t["template"] for t in value}
    return value or None


def _raw_is_faithful(path: Path) -> bool:
    """True when transformers would add nothing to what tokenizer.json does by itself.

    Some tokenizer classes rebuild the post-processor from `add_bos_token` /
    `add_eos_token` flags; those folders go through transformers.
    """
    cfg = _read_json(path / "tokenizer_config.json")
    return (path / "tokenizer.json").is_file() and not cfg.get("add_bos_token") \
        and not cfg.get("add_eos_token")


def load_tokenizer(path: str | os.PathLike, transformers: bool = False):
    """Load a HF tokenizer from a local folder.

    A plain `tokenizer.json` folder gives a `RawTokenizer` (fast start, no torch or
    transformers import); other folders, or `transformers=True`, a transformers tokenizer.

    Examples:
        >>> tok = load_tokenizer("../shared/assets/tokenizers/smollm2")  # doctest: +SKIP
        >>> tok.eos_token, len(tok)                                      # doctest: +SKIP
        ('<|im_end|>', 49152)
    """
    p = Path(path)
    try:
        if not transformers and _raw_is_faithful(p):
            return RawTokenizer(p)
        if (p / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(p))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
        hint = "" if p.exists() else " (no such folder)"
        raise TokenizerError(f"--tokenizer_path {path}: could not load a tokenizer{hint}: "
                             f"{type(e).__name__}: {e}") from None

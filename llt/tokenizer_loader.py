"""Loading a HF tokenizer from a local folder, fast where it can be.

`load_tokenizer` returns a `RawTokenizer` (built on the `tokenizers` library alone) when
the folder's `tokenizer.json` says everything and no chat template is needed: that import
does not pull in torch or transformers (AutoTokenizer costs +190 MB RSS and 2 s per
process), which keeps the encoder's workers small and quick to start. Otherwise it loads
the transformers tokenizer. Used by `llt encode` and `llt inspect`.
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

    Loads in 0.5 s instead of 2 s (no transformers import), which is most of the
    encoder's start-up. The ids come from the same `tokenizer.json` pipeline, and
    `tests/test_tokenizer.py` checks that every fact recorded about it (vocabulary size,
    EOS, BOS prefix, fingerprint) equals the transformers tokenizer's.
    """

    chat_template = None

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.eos_token = _config_token(path, "eos_token")
        self.eos_token_id = (self.backend_tokenizer.token_to_id(self.eos_token)
                             if self.eos_token else None)

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


def _raw_is_faithful(path: Path) -> bool:
    """True when transformers would add nothing to what tokenizer.json does by itself.

    Some tokenizer classes rebuild the post-processor from `add_bos_token` /
    `add_eos_token` flags; those folders go through transformers.
    """
    cfg = _read_json(path / "tokenizer_config.json")
    return (path / "tokenizer.json").is_file() and not cfg.get("add_bos_token") \
        and not cfg.get("add_eos_token")


def load_tokenizer(path: str | os.PathLike, need_chat_template: bool = True):
    """Load a HF tokenizer from a local folder.

    With `need_chat_template=False` and a plain `tokenizer.json` folder this returns a
    `RawTokenizer` (fast start, no torch or transformers import); otherwise a
    transformers tokenizer.

    Examples:
        >>> tok = load_tokenizer("../shared/assets/tokenizers/smollm2")  # doctest: +SKIP
        >>> tok.eos_token, len(tok)                                      # doctest: +SKIP
        ('<|im_end|>', 49152)
    """
    p = Path(path)
    try:
        if not need_chat_template and _raw_is_faithful(p):
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

"""Loading a HF tokenizer for encoding, and the facts about it the shard format records.

The encoder loads tokenizers through `PreTrainedTokenizerFast` when the folder has a
`tokenizer.json`: that import does not pull in torch (AutoTokenizer does, +190 MB RSS and
2 s per process), which keeps the encoder's workers small and quick to start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

from llt.errors import LltError


class TokenizerError(LltError, ValueError):
    """The tokenizer cannot do what the encode asks. The message names the path."""


def load_tokenizer(path: str | os.PathLike):
    """Load a HF tokenizer from a local folder (or hub id cached locally).

    Examples:
        >>> tok = load_tokenizer("../shared/assets/tokenizers/smollm2")  # doctest: +SKIP
        >>> tok.eos_token, len(tok)                                      # doctest: +SKIP
        ('<|im_end|>', 49152)
    """
    path = str(path)
    try:
        if Path(path, "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
        hint = "" if Path(path).exists() else " (no such folder)"
        raise TokenizerError(f"--tokenizer_path {path}: could not load a tokenizer{hint}: "
                             f"{type(e).__name__}: {e}") from None


def vocab_fingerprint(tok) -> str:
    """xxh3-128 of the token strings in id order (added tokens included).

    Two tokenizers with the same fingerprint map every id to the same token, which is what
    makes shards interchangeable between them.
    """
    vocab = tok.get_vocab()
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    return xxhash.xxh3_128(json.dumps(ordered, ensure_ascii=False).encode()).hexdigest()


def special_prefix(tok) -> list[int]:
    """Ids the tokenizer puts before a text of its own accord (a Llama-style BOS), else [].

    Examples:
        >>> special_prefix(qwen_tokenizer)  # doctest: +SKIP
        []
        >>> special_prefix(llama_tokenizer)  # doctest: +SKIP
        [128000]
    """
    probe = "hello"
    with_special = tok(probe, add_special_tokens=True)["input_ids"]
    plain = tok(probe, add_special_tokens=False)["input_ids"]
    if with_special[len(with_special) - len(plain):] == plain or not plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


@dataclass
class TokenizerInfo:
    """What the encoder and the shard headers need to know about the tokenizer."""

    path: str
    vocab_size: int  # len(tok): base vocabulary plus added tokens; every id is below it
    eos_id: int | None
    eos_token: str | None
    prefix_ids: list[int]
    fingerprint: str
    has_chat_template: bool

    @classmethod
    def of(cls, tok, path: str) -> "TokenizerInfo":
        return cls(
            path=str(Path(path).resolve()) if Path(path).exists() else str(path),
            vocab_size=len(tok),
            eos_id=tok.eos_token_id,
            eos_token=tok.eos_token,
            prefix_ids=special_prefix(tok),
            fingerprint=vocab_fingerprint(tok),
            has_chat_template=bool(getattr(tok, "chat_template", None)),
        )

    def require(self, encode_type: str, use_chat_template: bool) -> None:
        """Fail before any work when the tokenizer lacks what this encode type needs."""
        if self.eos_id is None and not use_chat_template:
            raise TokenizerError(
                f"--tokenizer_path {self.path}: the tokenizer has no EOS token, which "
                f"--encode_type {encode_type} appends to every sample; set `eos_token` in "
                "its tokenizer_config.json"
            )
        if use_chat_template and not self.has_chat_template:
            raise TokenizerError(
                f"--tokenizer_path {self.path}: the tokenizer has no chat template, which "
                f"--encode_type {encode_type}{' --qa_template chat' if encode_type == 'qa' else ''} "
                "needs; add `chat_template` to its tokenizer_config.json or encode plain qa"
            )

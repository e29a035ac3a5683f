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


def vocab_fingerprint(tok) -> str:
    """xxh3-128 of the token strings in id order (added tokens included).

    Two tokenizers with the same fingerprint map every id to the same token, which is what
    makes shards interchangeable between them. Read id by id in chunks: building the whole
    vocabulary as a Python dict would hold 40 MB for a 151k vocabulary.
    """
    h = xxhash.xxh3_128()
    n = len(tok)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        token = backend.id_to_token
    else:  # a slow tokenizer: ask it the same question through its own API
        token = tok.convert_ids_to_tokens
    for lo in range(0, n, 8192):
        chunk = [token(i) or "" for i in range(lo, min(n, lo + 8192))]
        h.update("\x00".join(chunk).encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


def special_prefix(tok) -> list[int]:
    """Ids the tokenizer puts before a text of its own accord (a Llama-style BOS), else [].

    Examples:
        >>> special_prefix(qwen_tokenizer)  # doctest: +SKIP
        []
        >>> special_prefix(llama_tokenizer)  # doctest: +SKIP
        [128000]
    """
    probe = "hello"
    # The backend's single encode: a batch call here would start tokenizers' thread pool,
    # which then stays disabled in the forked encoder workers.
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        with_special = backend.encode(probe, add_special_tokens=True).ids
        plain = backend.encode(probe, add_special_tokens=False).ids
    else:
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

"""What the encoder and the shard headers record about a tokenizer: `TokenizerInfo`
(vocabulary size, EOS, the BOS-style prefix it adds, fingerprint, chat template)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llt.shards.fingerprint import vocab_fingerprint
from llt.tokenizer_loader import TokenizerError


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
    def of(cls, tok, path: str, fingerprint: bool = True) -> "TokenizerInfo":
        """The facts about `tok`; `fingerprint=False` leaves the fingerprint "" for the
        caller to fill (the encoder computes it while its workers start)."""
        return cls(
            path=str(Path(path).resolve()) if Path(path).exists() else str(path),
            vocab_size=len(tok),
            eos_id=tok.eos_token_id,
            eos_token=tok.eos_token,
            prefix_ids=special_prefix(tok),
            fingerprint=vocab_fingerprint(tok) if fingerprint else "",
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

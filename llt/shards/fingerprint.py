"""The tokenizer fingerprint every shard header records (`tokenizer_fingerprint`).

Two tokenizers with the same fingerprint map every id to the same token string, which is
what makes shards interchangeable between them; the trainer compares it with the model's
tokenizer before the first step.
"""

from __future__ import annotations

import xxhash


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

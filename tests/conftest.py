"""Shared fixtures: a tiny BPE tokenizer trained in-process, and the real assets in
../shared when present (tests that need them skip with the reason where it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llt.data.config import EncodeArgs
from llt.data.encode import run_encode
from llt.data.format import ShardReader
from llt.data.manifest import read_manifest
from llt.toy import build_tokenizer, toy_records

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_asset(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared assets folder is absent in this checkout)")
    return path


@pytest.fixture(scope="session")
def tiny_tok_dir(tmp_path_factory) -> Path:
    docs, qa = toy_records(500)
    out = tmp_path_factory.mktemp("tok") / "tiny"
    build_tokenizer(docs + [r["q"] + " " + r["a"] for r in qa] + ["Hello there, how are you?"], out)
    return out


@pytest.fixture(scope="session")
def tiny_tok(tiny_tok_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tiny_tok_dir))


@pytest.fixture(scope="session")
def bos_tok_dir(tmp_path_factory, tiny_tok) -> Path:
    """The tiny tokenizer with a Llama-style post-processor that prepends a BOS."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = tiny_tok.backend_tokenizer
    bos = backend.token_to_id("<|im_start|>")
    backend = type(backend).from_str(backend.to_str())
    backend.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                  bos_token="<|im_start|>", pad_token="<|endoftext|>")
    out = tmp_path_factory.mktemp("tok") / "bos"
    tok.save_pretrained(str(out))
    return out


def encode(tmp_path: Path, tok_dir: Path, inputs=None, **kw) -> tuple[dict, Path]:
    """Run the encoder in-process; return (manifest, corpus folder)."""
    kw.setdefault("corpus_name", "c")
    kw.setdefault("num_workers", 1)
    if inputs:
        kw["input_path"] = [str(p) for p in inputs]
    args = EncodeArgs(tokenizer_path=str(tok_dir), output_path=str(tmp_path / "out"), **kw)
    manifest = run_encode(args, progress_bar=False)
    return manifest, tmp_path / "out" / kw["corpus_name"]


def read_corpus(corpus: Path) -> list[tuple[list[int], np.ndarray, list[int]]]:
    """Every sample of a corpus in order: (ids, loss mask, document starts)."""
    out = []
    for shard in read_manifest(corpus)["shards"]:
        r = ShardReader(corpus / f"{shard['name']}.idx")
        out += [(r.tokens(i).tolist(), r.loss_mask(i), r.doc_starts(i).tolist()) for i in range(len(r))]
    return out

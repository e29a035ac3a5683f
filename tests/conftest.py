"""Shared fixtures: a tiny BPE tokenizer trained in-process, and the real assets in
../shared when present (tests that need them skip with the reason where it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llt.encode.config import EncodeArgs
from llt.encode.job import run_encode
from llt.shards.reader import ShardReader
from llt.shards.manifest import read_manifest
from llt.toy import build_tokenizer, toy_records

SHARED = Path(__file__).resolve().parents[2] / "shared"
# The releases a run used, printed in pytest's header: CI installs the newest that
# setup.cfg allows, and a failure after a release names what moved.
STACK = ("torch", "transformers", "tokenizers", "accelerate", "peft", "deepspeed", "datasets", "numpy",
         "bitsandbytes", "trl")


def pytest_report_header(config):
    from importlib.metadata import PackageNotFoundError, version

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"
    return "llt stack: " + ", ".join(f"{name} {v(name)}" for name in STACK)


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


# ---- training fixtures: a tiny Llama and corpora made from the toy data ----

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tok_dir, tiny_tok) -> Path:
    """A 2-layer Llama with the tiny tokenizer saved beside it (a complete HF folder)."""
    from llt.toy import build_tiny_model

    out = tmp_path_factory.mktemp("model") / "tiny-llama"
    build_tiny_model(out, len(tiny_tok))
    tiny_tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def toy_corpora(tmp_path_factory, tiny_tok_dir) -> dict[str, Path]:
    """qa packed (128), qa unpacked, and pretrain text (64) corpora of the toy data."""
    from llt.toy import write_jsonl

    root = tmp_path_factory.mktemp("corpora")
    docs, qa = toy_records(300, seed=1)
    text = write_jsonl(root / "text.jsonl", docs)
    qa_path = write_jsonl(root / "qa.jsonl", qa)
    out = {}
    for name, path, kw in (("qa_packed", qa_path, dict(encode_type="qa", max_length=128, merge_data=True)),
                           ("qa", qa_path, dict(encode_type="qa", max_length=128)),
                           ("text", text, dict(encode_type="pretrain", max_length=64))):
        _, out[name] = encode(root, tiny_tok_dir, [path], corpus_name=name, **kw)
    return out


def train(argv: list[str]) -> int:
    """Run the training recipe in-process (plain `python recipes/sft.py` semantics)."""
    from llt.train.sft import main

    return main(["--deepspeed_config_path", "none", "--use_cpu", "--report_to", "none",
                 "--disable_tqdm", "true", *argv])


def run_folder(output_path: Path) -> Path:
    runs = sorted(p for p in Path(output_path).iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return runs[0]


def logged_losses(folder: Path) -> dict[int, float]:
    import json

    history = json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}

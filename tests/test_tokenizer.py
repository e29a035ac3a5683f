"""The fast tokenizer path records the same facts as the transformers tokenizer, and the
encoder's flag parser follows HfArgumentParser's conventions."""

from __future__ import annotations

import pytest
from conftest import shared_asset

from llt.flags import parse_dataclass
from llt.encode.config import EncodeArgs
from llt.encode.tokenizer_info import TokenizerInfo
from llt.tokenizer_loader import RawTokenizer, load_tokenizer


def facts(tok, path):
    info = TokenizerInfo.of(tok, str(path))
    return info.vocab_size, info.eos_id, info.eos_token, info.prefix_ids, info.fingerprint


@pytest.mark.parametrize("which", ["tiny", "bos", "qwen2.5", "smollm2"])
def test_raw_tokenizer_agrees_with_transformers(which, tiny_tok_dir, bos_tok_dir):
    path = {"tiny": tiny_tok_dir, "bos": bos_tok_dir}.get(which) or shared_asset(f"assets/tokenizers/{which}")
    raw = load_tokenizer(path, need_chat_template=False)
    full = load_tokenizer(path, need_chat_template=True)
    assert isinstance(raw, RawTokenizer) and not isinstance(full, RawTokenizer)
    assert facts(raw, path) == facts(full, path)
    text = "Hello world: 12 + 30 = 42, naïve café ✓"
    assert raw.backend_tokenizer.encode(text, add_special_tokens=False).ids == \
        full(text, add_special_tokens=False)["input_ids"]
    if which == "bos":
        assert facts(raw, path)[3] == [full.bos_token_id]


def test_encode_flags_parse_like_hf_argument_parser():
    args = parse_dataclass(EncodeArgs, [
        "--tokenizer_path", "t", "--output_path", "o", "--corpus_name", "c",
        "--input_path", "a.jsonl", "b.parquet", "--merge_data", "--tokens_per_file", "5e8",
        "--save_dtype", "int16", "--encode_type", "qa", "--strict", "false"], "llt encode")
    assert args.input_path == ["a.jsonl", "b.parquet"] and args.merge_data is True
    assert args.tokens_per_file == 5e8 and args.save_dtype == "int16" and args.strict is False
    args = parse_dataclass(EncodeArgs, ["--tokenizer_path", "t", "--output_path", "o",
                                        "--corpus_name", "c", "--data_loader_path", "l.py",
                                        "--merge_data", "True"], "llt encode")
    assert args.merge_data is True and args.data_loader_path == "l.py" and args.input_path == []
    with pytest.raises(SystemExit):
        parse_dataclass(EncodeArgs, ["--tokenizer_path", "t", "--encode_type", "poems"], "llt encode")

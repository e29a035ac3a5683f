"""The fast tokenizer path records the same facts as the transformers tokenizer (chat
template, named special tokens and hard special tokens included), and the
encoder's flag parser follows HfArgumentParser's conventions."""

from __future__ import annotations

import pytest
from conftest import shared_asset

from llt.flags import parse_dataclass
from llt.encode.chat.joins import hard_ends
from llt.encode.config import EncodeArgs
from llt.encode.tokenizer_info import TokenizerInfo
from llt.tokenizer_loader import RawTokenizer, load_tokenizer


def facts(tok, path):
    info = TokenizerInfo.of(tok, str(path))
    return (info.vocab_size, info.eos_id, info.eos_token, info.prefix_ids, info.fingerprint,
            tok.chat_template, tok.special_tokens_map, hard_ends(tok))


@pytest.mark.parametrize("which", ["tiny", "bos", pytest.param("qwen2.5", marks=pytest.mark.slow),
                                   pytest.param("smollm2", marks=pytest.mark.slow)])
def test_raw_tokenizer_agrees_with_transformers(which, tiny_tok_dir, bos_tok_dir):
    path = {"tiny": tiny_tok_dir, "bos": bos_tok_dir}.get(which) or shared_asset(f"assets/tokenizers/{which}")
    raw = load_tokenizer(path)
    full = load_tokenizer(path, transformers=True)
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
    from llt.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^--encode_type: poems is not one of pretrain, qa, chat, preference, kto$"):
        parse_dataclass(EncodeArgs, ["--tokenizer_path", "t", "--encode_type", "poems"], "llt encode")


@pytest.mark.parametrize("layout", ["jinja_file", "named_templates", "config_list"])
def test_raw_tokenizer_reads_chat_templates_as_transformers_does(layout, tiny_tok, tmp_path):
    """chat_template.jinja, additional_chat_templates/NAME.jinja beside it, and the older list in
    tokenizer_config.json: the raw path finds the same template(s) transformers loads."""
    import json
    import shutil

    default = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    tools = "TOOLS {{ tools | tojson }}" + default
    tok = type(tiny_tok).from_pretrained(tiny_tok.name_or_path)
    tok.chat_template = default if layout == "jinja_file" else {"default": default, "tool_use": tools}
    tok.save_pretrained(str(tmp_path))
    if layout == "config_list":  # the form tokenizer_config.json held before chat_template.jinja
        (tmp_path / "chat_template.jinja").unlink()
        shutil.rmtree(tmp_path / "additional_chat_templates")
        cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
        cfg["chat_template"] = [{"name": "default", "template": default}, {"name": "tool_use", "template": tools}]
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    raw, full = load_tokenizer(tmp_path), load_tokenizer(tmp_path, transformers=True)
    assert isinstance(raw, RawTokenizer)
    assert raw.chat_template == full.chat_template
    assert raw.chat_template == (default if layout == "jinja_file" else {"default": default, "tool_use": tools})
    assert facts(raw, tmp_path) == facts(full, tmp_path)

"""Texts the chat encoder tokenizes together give exactly the ids of their parts apart."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import shared_asset

from llt.encode.chat.rule import ChatSample
from llt.encode.chat.joins import Joiner, newline_joins_exact, segment_lengths
from llt.tokenizer_loader import load_tokenizer

TAILS = ["assistant\n", "model\n", "x \n", "x\t\n", "]\n", "7\n", ":\n\n", "\n", "ab  \n", "\u00e9\n", "a'\n"]
HEADS = ["Hello", "hello world", "'s fine", "'S", "1234 apples", "7", "-5", "!!", "(x)", "<think>\nhm</think>",
         "x" * 40, " Hello", "  x", "\tx", "\nx", "\n\nx", "\u0301e", "e\u0301", "\u00e9t\u00e9", "\u4f60\u597d",
         "#1", "A", "z\n", "'ll", "a\u200bb"]


def tokenizer_under_test(name, tiny_tok_dir):
    if name == "tiny":
        return load_tokenizer(tiny_tok_dir)
    return load_tokenizer(shared_asset(f"assets/tokenizers/{name}"))


# The real tokenizers come from ../shared: the slow tier.
TOKENIZERS = ["tiny", pytest.param("qwen2.5", marks=pytest.mark.slow), pytest.param("smollm2", marks=pytest.mark.slow)]


def ids(tok, text):
    return tok.backend_tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("name", TOKENIZERS)
def test_newline_joins_are_exact_on_adversarial_boundaries(tiny_tok_dir, name):
    """Every (prompt tail, turn head) pair the joiner joins tokenizes as its parts; the
    common one (`...assistant\\n` + text) is joined for every tokenizer here."""
    for tok in [tokenizer_under_test(name, tiny_tok_dir)]:
        joiner = Joiner(tok)
        assert joiner.newline, name
        lead = "<|im_start|>" if "<|im_start|>" in joiner.hard else next(iter(joiner.hard))
        joined = 0
        for tail, head in itertools.product(TAILS, HEADS):
            prompt = f"{lead}user\nq{lead}{tail}"
            texts, _, cuts = joiner.texts([(0, ChatSample([prompt, head], [False, True]))])
            if len(texts) == 1:
                joined += 1
                assert ids(tok, prompt + head) == ids(tok, prompt) + ids(tok, head), (name, tail, head)
                n = np.array([len(ids(tok, prompt + head))])
                got = segment_lengths(np.array(ids(tok, prompt + head)), n, cuts)
                assert got.tolist() == [len(ids(tok, prompt)), len(ids(tok, head))], (name, tail, head)
            else:  # refused: the pair must be one the docstring's argument does not cover
                assert (tail[-2:-1].isspace() or tail == "\n" or not head[0].isascii()
                        or head[0].isspace()), (name, tail, head)
        assert joined >= len(HEADS), name  # "assistant\n" + every ASCII non-space head, at least


def test_joins_refused_for_pre_tokenizers_the_argument_does_not_cover(tiny_tok):
    from tokenizers import normalizers, pre_tokenizers

    def variant(**parts):
        tok = type(tiny_tok).from_pretrained(tiny_tok.name_or_path)
        for k, v in parts.items():
            setattr(tok.backend_tokenizer, k, v)
        return tok

    assert newline_joins_exact(tiny_tok)
    assert not newline_joins_exact(variant(pre_tokenizer=pre_tokenizers.Metaspace()))
    assert not newline_joins_exact(variant(pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=True)))
    assert not newline_joins_exact(variant(normalizer=normalizers.Lowercase()))
    with_newline = type(tiny_tok).from_pretrained(tiny_tok.name_or_path)
    with_newline.add_tokens(["\n\n"])
    assert not newline_joins_exact(with_newline)


def test_a_conversation_tokenized_as_one_text_splits_back_per_segment(tiny_tok):
    """Hard-token joints and newline joints in one sample (and a turn with a special token
    inside it): the per-segment counts equal tokenizing each segment alone."""
    joiner = Joiner(tiny_tok)
    sample = ChatSample(["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "Hello<|im_end|>",
                         "\n<|im_start|>user\nagain <|im_start|> x<|im_end|>\n<|im_start|>assistant\n",
                         "there<|im_end|>", "\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", " spaced"],
                        [False, True, False, True, False, True])
    other = ChatSample(["<|im_start|>assistant\n", "a<|im_end|> b<|im_start|>", "tail", "x"],
                       [False, True, False, True])
    layout = [(0, sample), (1, other)]
    texts, owners, cuts = joiner.texts(layout)
    # the space-led last turn is not joined; "tail" after "<|im_start|>" is (hard joint)
    assert texts == ["".join(sample.texts[:5]), sample.texts[5], "".join(other.texts[:3]), "x"]
    assert owners == [0, 0, 1, 1]
    encs = tiny_tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    flat = np.array([i for e in encs for i in e.ids])
    got = segment_lengths(flat, np.array([len(e.ids) for e in encs]), cuts)
    want = [len(ids(tiny_tok, t)) for _, s in layout for t in s.texts]
    assert got.tolist() == want

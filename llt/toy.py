"""Tiny offline assets: a generated dataset and a BPE tokenizer trained on it in-process.

Nothing can be downloaded on the machines llt is tested on, so the quickstart and the
tests make their own: `toy_records` writes learnable data (facts and arithmetic), and
`build_tokenizer` trains a byte-level BPE on it and saves a HF tokenizer folder with an
EOS, a pad token and a ChatML chat template, like the real chat models llt trains.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
_ANIMALS = ["cat", "dog", "fox", "owl", "bear", "wolf", "frog", "duck", "lion", "seal"]


def toy_records(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    """`n` pretraining documents and `n` question/answer pairs, deterministic for `seed`.

    Examples:
        >>> docs, qa = toy_records(2)
        >>> sorted(qa[0])
        ['a', 'q']
    """
    rng = random.Random(seed)
    docs, qa = [], []
    for _ in range(n):
        animal, color = rng.choice(_ANIMALS), rng.choice(_COLORS)
        x, y = rng.randint(0, 50), rng.randint(0, 50)
        docs.append(f"The {color} {animal} counted from {x} to {x + 3}: "
                    + ", ".join(str(x + i) for i in range(4)) + f". Then the {animal} slept.")
        qa.append({"q": f"What is {x} plus {y}?", "a": f"{x} plus {y} is {x + y}."})
    return docs, qa


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec if isinstance(rec, dict) else {"text": rec}) + "\n")
    return path


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 400):
    """Train a byte-level BPE on `texts`, save it as a HF tokenizer folder, return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(str(out_dir))
    return tok


def build_tiny_model(out_dir: Path, vocab_size: int, hidden: int = 64, layers: int = 2,
                     heads: int = 4, seed: int = 0, max_positions: int = 2048) -> Path:
    """A randomly initialised tiny Llama saved as a HF model folder (fp32 safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
                         tie_word_embeddings=False, use_cache=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)

"""`llt generate MODEL_OR_CHECKPOINT --prompt ...`: see what training did, in one line.

    llt generate output/lora-20261128-101500 --prompt "Give three tips for staying healthy."

The prompt goes through the tokenizer's chat template (as a user turn, after `--system`
if given) when the tokenizer has one; `--raw` feeds it as plain text, which is what
plain `qa` and `pretrain` shards were trained on. Decoding is greedy unless
`--temperature` > 0. A LoRA checkpoint is loaded on its base model and merged first.
"""

from __future__ import annotations

import argparse

import torch

from llt.runs.load import load_checkpoint


def prompt_ids(tokenizer, prompt: str, system: str | None = None, raw: bool = False) -> torch.Tensor:
    if raw or not getattr(tokenizer, "chat_template", None):
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    return out["input_ids"]


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, system: str | None = None, raw: bool = False) -> str:
    ids = prompt_ids(tokenizer, prompt, system, raw).to(model.device)
    kw = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    eos = [t for t in {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
           if t is not None]
    eos = [e for t in eos for e in (t if isinstance(t, list) else [t])]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         eos_token_id=eos or None, pad_token_id=tokenizer.pad_token_id, **kw)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model folder, checkpoint-N folder, or run folder (its newest checkpoint)")
    ap.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    ap.add_argument("--system", help="system message (chat template only)")
    ap.add_argument("--raw", action="store_true", help="do not apply the chat template")
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    ap.add_argument("--base_model", help="LoRA: the base model, when the run's one has moved")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    dtype = a.dtype
    if dtype == "auto" and not torch.cuda.is_available():
        dtype = "fp32"  # CPU matmuls in bf16/fp16 are slow or unsupported
    loaded = load_checkpoint(a.model, dtype, base_model=a.base_model)
    model = loaded.model.to("cuda" if torch.cuda.is_available() else "cpu")
    for i, p in enumerate(a.prompt):
        text = generate(model, loaded.tokenizer, p, a.max_new_tokens, a.temperature, a.top_p, a.system, a.raw)
        if len(a.prompt) > 1:
            print(f"### prompt {i + 1}: {p}")
        print(text)
    return 0

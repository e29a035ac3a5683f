"""Benchmark: peak memory of the loss path, stock full-vocabulary logits vs llt's chunked loss.

    python bench/loss_memory.py                  # Qwen2.5-shaped, 151,665-token vocabulary, 4,096 tokens
    python bench/loss_memory.py --tokens 2048 --layers 2

A Qwen2.5-0.5B-shaped model (hidden 896, the real 151,665-token vocabulary, tied
embeddings, `--layers` decoder layers, random init, fp32, CPU) does one forward and
backward over one packed row of `--tokens` tokens, half of them trained (a typical SFT
mix), with transformers' stock loss and with llt's chunked loss (`llt/model/loss.py`), each
in a fresh subprocess, and a third time with no lm_head or loss at all (the decoder's own
activations). A step's peak is the process's peak RSS during it minus its RSS just before
(model, batch and gradient buffers already resident); the loss path's peak is that minus
the decoder-only step's: the logits, their softmax and their gradient. Prints JSON with both peaks,
their ratio, the step times, and the loss values (which must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(mode: str, tokens: int, layers: int, vocab: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llt.model.loss import use_chunked_loss

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                      num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                      use_cache=False, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(cfg)
    model.train()
    if mode == "chunked":
        assert use_chunked_loss(model)
    ids = torch.randint(0, vocab, (1, tokens))
    labels = ids.clone()
    labels[:, : tokens // 2] = -100  # the prompt half is not trained
    # Warm the allocator and autograd once on a tiny input, so the measured step is the
    # loss path, not first-call setup.
    model(input_ids=ids[:, :8], labels=labels[:, :8]).loss.backward()
    model.zero_grad(set_to_none=False)
    before = rss_mb()
    t0 = time.perf_counter()
    if mode == "decoder_only":  # the same step without any lm_head or loss: the baseline
        loss = model.model(input_ids=ids).last_hidden_state.float().pow(2).mean()
    else:
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"loss": loss.item(), "seconds": round(seconds, 2),
                                  "rss_before_mb": round(before), "peak_rss_mb": round(peak),
                                  "step_peak_over_before_mb": round(peak - before)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151665)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args._child, args.tokens, args.layers, args.vocab)
    out = {"model": f"Qwen2.5-0.5B-shaped, {args.layers} layers, vocab {args.vocab:,}, fp32, CPU",
           "tokens": args.tokens, "trained_tokens": args.tokens // 2}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for mode in ("decoder_only", "stock", "chunked"):
        proc = subprocess.run([sys.executable, __file__, "--_child", mode, "--tokens", str(args.tokens),
                               "--layers", str(args.layers), "--vocab", str(args.vocab)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        out[mode] = json.loads(line[0][7:])
    base = out["decoder_only"]["step_peak_over_before_mb"]
    for mode in ("stock", "chunked"):
        out[mode]["loss_path_peak_mb"] = out[mode]["step_peak_over_before_mb"] - base
    out["loss_path_peak_ratio"] = round(out["stock"]["loss_path_peak_mb"]
                                        / max(out["chunked"]["loss_path_peak_mb"], 1), 2)
    out["losses_agree"] = abs(out["stock"]["loss"] - out["chunked"]["loss"]) < 1e-3
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""`llt export CHECKPOINT --out DIR`: a standalone HF model folder from any llt checkpoint.

    llt export output/lora-20261128-101500 --out models/my-model --dtype bf16

The folder holds sharded safetensors, `config.json`, `generation_config.json` and the
tokenizer with its chat template and any added tokens: it loads with
`AutoModelForCausalLM.from_pretrained` and serves as is (vLLM, TGI, llama.cpp's converter);
a reward model's (`llt reward`) loads with `AutoModelForSequenceClassification` and
`pipeline("text-classification")`.
A LoRA checkpoint is merged into its base weights (`--no-merge` writes the adapter
instead); a DeepSpeed ZeRO checkpoint without model weights is consolidated on the CPU.
The folder is written beside its final name and renamed when complete, so an interrupted
export never leaves a folder that looks finished. `--check` reloads the export and
compares its logits with the checkpoint's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from llt.errors import CheckpointError
from llt.fsutil import replace_dir
from llt.interrupt import deferred
from llt.runs.load import Loaded, auto_class, grow_for_tokenizer, load_checkpoint

EXPORT_INFO = "llt_export.json"


def export(src: str, out: str | Path, dtype: str = "auto", merge: bool = True, base_model: str | None = None,
           weights: str = "auto", best: bool = False, max_shard_size: str = "5GB", overwrite: bool = False,
           check: bool = False) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    loaded = load_checkpoint(src, dtype, merge=merge, base_model=base_model, weights=weights, best=best)
    if not merge and loaded.kind != "lora":
        raise CheckpointError(f"--no-merge: {loaded.checkpoint} is a {loaded.kind} checkpoint, not a LoRA one")
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write(loaded, staging, max_shard_size, merge, check)
    except BaseException:  # an error or Ctrl-C: the half-written folder goes too
        with deferred():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    with deferred(note=f"after the export was complete: {out}"):
        replace_dir(staging, out, trash=out.parent / f".{out.name}.replaced")
    info = json.loads((out / EXPORT_INFO).read_text())
    info["files"] = sorted(p.name for p in out.iterdir())
    return info


def _write(loaded, staging: Path, max_shard_size: str, merge: bool, check: bool) -> None:
    """The model, tokenizer and export_info.json into `staging`."""
    loaded.model.save_pretrained(str(staging), safe_serialization=True, max_shard_size=max_shard_size)
    loaded.tokenizer.save_pretrained(str(staging))
    info = {"source": str(loaded.checkpoint.resolve()), "kind": loaded.kind, "merged": merge or loaded.kind != "lora",
            "base_model": loaded.base_model, "dtype": loaded.info["dtype"], "step": loaded.info["step"],
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        from importlib.metadata import version
        info["llt"] = version("llt")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        pass
    if check:
        info["check_max_abs_logit_diff"] = compare_logits(loaded, staging)
        quantized = quantized_base_diff(loaded) if merge and loaded.kind == "lora" else None
        if quantized is not None:
            info["check_against_quantized_base"] = quantized
    (staging / EXPORT_INFO).write_text(json.dumps(info, indent=1))


def probe_ids(tokenizer) -> torch.Tensor:
    text = "The quick brown fox jumps over the lazy dog. 1 2 3"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids if ids.numel() else torch.tensor([[0, 1, 2, 3]])


@torch.no_grad()
def compare_logits(loaded: Loaded, folder: Path) -> float:
    """Max |logit difference| (a reward model: reward difference) between the in-memory model
    and the export reloaded from disk."""
    ids = probe_ids(loaded.tokenizer)
    if (folder / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

        auto = AutoPeftModelForSequenceClassification if loaded.reward else AutoPeftModelForCausalLM
        head = {"num_labels": 1} if loaded.reward else {}  # the base is the causal LM it started from
        again = auto.from_pretrained(str(folder), dtype=loaded.model.dtype, **head)
    else:
        again = auto_class(loaded.reward).from_pretrained(str(folder), dtype=loaded.model.dtype)
    again.eval()
    a = loaded.model(input_ids=ids).logits.float()
    b = again(input_ids=ids).logits.float()
    diff = float((a - b).abs().max())
    tol = 1e-4 if loaded.model.dtype == torch.float32 else 5e-2
    if diff > tol:
        raise CheckpointError(f"--check: the exported model's logits differ from the checkpoint's by {diff:.3g} "
                              f"(tolerance {tol}); the export in {folder} was not moved into place")
    return diff


@torch.no_grad()
def quantized_base_diff(loaded: Loaded) -> dict | None:
    """For a QLoRA run: max |logit difference| between the merged export (full-precision
    base + adapter) and what training saw (the adapter on the quantized base). Not zero:
    the merge removes the quantization error from the base weights; printed, not judged."""
    from types import SimpleNamespace

    from llt.runs.folder import run_config

    cfg = run_config(loaded.checkpoint)
    flags = cfg.get("model_args", {})
    if not (flags.get("load_in_4bit") or flags.get("load_in_8bit")) or loaded.reward:
        return None
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llt.model.quant import bnb_config

    bf16 = cfg.get("args", {}).get("bf16")
    qcfg = bnb_config(SimpleNamespace(**flags), torch.bfloat16 if bf16 else torch.float32)
    base = AutoModelForCausalLM.from_pretrained(loaded.base_model, quantization_config=qcfg,
                                                dtype=torch.bfloat16 if bf16 else torch.float32,
                                                device_map={"": "cuda" if torch.cuda.is_available() else "cpu"})
    grow_for_tokenizer(base, loaded.tokenizer)
    trained = PeftModel.from_pretrained(base, str(loaded.checkpoint)).eval()
    ids = probe_ids(loaded.tokenizer)
    a = trained(input_ids=ids.to(base.device)).logits.float().cpu()
    b = loaded.model(input_ids=ids).logits.float()
    what = "4-bit " + qcfg.bnb_4bit_quant_type if qcfg.load_in_4bit else "8-bit"
    diff = (a - b).abs()
    return {"base": what, "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt export", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint-N folder, or a run folder (its newest checkpoint)")
    ap.add_argument("--out", required=True, help="folder to write the model into")
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                    help="weights dtype (auto: the dtype the original model was published in)")
    ap.add_argument("--no-merge", "--no_merge", dest="merge", action="store_false",
                    help="LoRA: write the adapter (and tokenizer) instead of merged weights")
    ap.add_argument("--base_model", help="LoRA: the base model, when the run's one has moved")
    ap.add_argument("--weights", default="auto", choices=("auto", "model", "zero"),
                    help="auto: the checkpoint's model weights, else its DeepSpeed ZeRO shards; "
                         "zero: consolidate the ZeRO fp32 master weights even when model weights exist")
    ap.add_argument("--best", action="store_true", help="with a run folder: its best checkpoint by eval loss")
    ap.add_argument("--max_shard_size", default="5GB", help="safetensors shard size (default 5GB)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--check", action="store_true",
                    help="reload the export and compare its logits with the checkpoint's")
    a = ap.parse_args(argv)
    info = export(a.checkpoint, a.out, a.dtype, a.merge, a.base_model, a.weights, a.best, a.max_shard_size,
                  a.overwrite, a.check)
    what = "merged LoRA" if info["kind"] == "lora" and info["merged"] else info["kind"]
    extra = f"; logits match (max diff {info['check_max_abs_logit_diff']:.2g})" if "check_max_abs_logit_diff" in info else ""
    q = info.get("check_against_quantized_base")
    if q:
        extra += (f"\n  against the adapter on the {q['base']} base it trained on: logits differ by "
                  f"{q['max_abs_logit_diff']:.3g} at most, {q['mean_abs_logit_diff']:.3g} on average, same top "
                  f"token at {q['top1_agreement']:.0%} of positions (the merge drops the quantization error)")
    print(f"llt export: {info['source']} ({what}, step {info['step']}) -> {a.out} in {info['dtype']}{extra}")
    print("  " + "  ".join(info["files"]))
    return 0

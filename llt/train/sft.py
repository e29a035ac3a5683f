"""Supervised fine-tuning and continued pre-training on llt shards: the recipe's body.

    accelerate launch recipes/sft.py --config recipes/lora_sft.yaml \\
        --model_path MODEL --data_path out/alpaca

Reads like a table of contents: parse, tokenizer, data, model, LoRA, trainer, train.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from llt.errors import LltError
from llt.runs.folder import CONFIG


def main(argv: list[str] | None = None, preference: bool = False) -> int:
    """`preference=True`: recipes/dpo.py (its flags, pair corpora, `PreferenceTrainer`)."""
    from llt.train.parse import parse_args

    command = "llt dpo" if preference else "llt train"
    try:
        try:
            extra = ()
            if preference:
                from llt.train.preference import PreferenceArguments

                extra = (PreferenceArguments,)
            groups = parse_args(argv, extra)
            args = groups[3]
            trainer = build(*groups)
        except LltError as e:
            print(f"{command}: error: {e}", file=sys.stderr)
            return 2
        return _train(trainer, args, command)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Every rank waits for the others, then the process group is torn down (on the error
    path too). A rank that exits while another is still writing reports would otherwise
    take gloo's threads down mid-use ("terminate called without an active exception",
    seen once in CI)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _train(trainer, args, command: str = "llt train") -> int:
    """Train, then say how it ended; 0 unless the DeepSpeed JSON contradicts the flags."""
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except ValueError as e:
        # Values HF can only check once the schedule is known (warmup, total steps).
        if "DeepSpeed config values that mismatch" not in str(e):
            raise
        print(f"{command}: error: --deepspeed_config_path {args.deepspeed}: {e}", file=sys.stderr)
        return 2
    if trainer.already_finished is not None:
        print(f"{command}: {args.resume_from_checkpoint} is at step {trainer.already_finished}, the "
              "last step of this run; nothing to train (raise --max_steps or --max_epochs to go on)")
        return 0
    preempt = trainer.preemption
    if preempt.stopped_at is not None:
        if args.should_save:
            import signal
            name = signal.Signals(preempt.received).name if preempt.received else "a signal on another rank"
            print(f"{command}: stopped by {name} after step {preempt.stopped_at}; "
                  f"resumable checkpoint saved; continue with --load_ckpt_path {args.output_dir}")
        return 0
    if args.should_save:
        print(f"{command}: done; run folder {args.output_dir}")
    return 0


def build(model_args, data_args, lora_args, args, pref_args=None):
    """Everything up to `trainer.train()`; every check that can fail runs here. With
    `pref_args` (recipes/dpo.py) the corpora must hold preference pairs and the trainer is
    `PreferenceTrainer`; without, they must not."""
    from llt.data.collate import make_collator
    from llt.data.run_data import build_data, corpus_specs
    from llt.train.attention import is_varlen
    from llt.train.callbacks import CorpusMixCallback, PreemptionCallback, ThroughputCallback, peak_tflops
    from llt.train.checks import (adopt_chat_template, check_data_fits, check_encode_types, check_world,
                                  verify_on_local_main)
    from llt.train.lora import apply_lora
    from llt.train.loss import use_chunked_loss
    from llt.train.model import flops_per_token_info, load_model, load_training_tokenizer
    from llt.train.pref_setup import trainer_class
    from llt.train.quant import quantization_config
    from transformers import set_seed

    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(message)s")
    check_world(args)
    tokenizer, new_ids = load_training_tokenizer(model_args)
    quantization = quantization_config(model_args, args, lora_args.use_lora)  # fails before any data work
    # Seed now, not only in Trainer.__init__ (after the model exists): LoRA's A matrices are
    # drawn while the model is built, and two runs with one --seed must start alike.
    set_seed(args.seed)
    if data_args.verify_data:
        verify_on_local_main([s.path for specs in corpus_specs(data_args) for s in specs], args)
    data = build_data(data_args, seed=args.data_seed if args.data_seed is not None else args.seed)
    check_encode_types(data, preference=pref_args is not None)
    adopt_chat_template(tokenizer, data)  # saved with every checkpoint: export prompts as trained
    model = load_model(model_args, args, tokenizer, new_ids, padded=data_args.padding != "free",
                       quantization=quantization)
    check_data_fits(data.dataset, tokenizer, model, new_ids)
    # Liger's fused linear cross-entropy (--use_liger_kernel, patched in by HF) does the
    # same job in one kernel; llt's chunked loss is the portable default.
    group_loss = bool(model_args.chunked_loss and not args.use_liger_kernel
                      and use_chunked_loss(model, n_groups=data.n_groups)) and pref_args is None
    attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
    collator = make_collator(data_args.padding, data.dataset, tokenizer.pad_token_id, is_varlen(attn), attn,
                             data_args.pad_to_multiple_of, data.n_groups, pairs=pref_args is not None)
    throughput = ThroughputCallback(flops_per_token_info(model), peak_tflops(args.peak_tflops))
    if lora_args.use_lora:
        model = apply_lora(model, lora_args, new_ids)
    mix = CorpusMixCallback(data.names) if data.dataset.n_corpora > 1 else None
    preemption = PreemptionCallback()
    callbacks = _callbacks(args, preemption)
    cls, extra = trainer_class(pref_args, model, model_args, lora_args, args)
    trainer = cls(
        model=model, args=args, train_dataset=data.dataset, processing_class=tokenizer,
        data_collator=collator, callbacks=callbacks, shuffle_data=data_args.shuffle_data,
        throughput=throughput, plan=data.plan, eval_dataset=data.eval_set, mix=mix,
        preemption=preemption, group_loss=group_loss, **extra)
    groups = {"model_args": model_args, "data_args": data_args, "lora_args": lora_args, "args": args}
    if pref_args is not None:
        groups["preference_args"] = pref_args
    return _ready(trainer, [mix, throughput], data, model, groups)


def _ready(trainer, meters: list, data, model, groups: dict):
    """The meters first among the callbacks, the resume planned, the config and report saved."""
    from llt.train.report import write_run_report

    args = trainer.args
    # The meters go before HF's own callbacks (which the constructor puts first), so the
    # figures they add reach the printed line and every report_to backend.
    for meter in [m for m in meters if m is not None]:
        trainer.callback_handler.callbacks.insert(0, meter)
    if args.resume_from_checkpoint:
        args.resume_from_checkpoint = trainer.plan_resume(args.resume_from_checkpoint)
    if args.should_save:
        save_config(args.output_dir, **groups)
        write_run_report(args.output_dir, args, data, model)
    return trainer


def _callbacks(args, preemption) -> list:
    from llt.train.callbacks import LossReportCallback, ProgressLineCallback, SaveScheduleCallback

    callbacks = [LossReportCallback(), SaveScheduleCallback(args.save_epochs, args.save_final), preemption]
    if getattr(args, "progress_lines", False):
        callbacks.append(ProgressLineCallback())
    return callbacks


def save_config(folder: str, **groups) -> Path:
    """The resolved configuration, every flag of every group, as `llt_config.json`."""
    out = {}
    for name, obj in groups.items():
        out[name] = obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)
    path = Path(folder) / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    return path

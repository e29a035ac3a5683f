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
from llt.train.config import ConfigError



def main(argv: list[str] | None = None) -> int:
    from llt.train.parse import parse_args

    try:
        model_args, data_args, lora_args, args = parse_args(argv)
        trainer = build(model_args, data_args, lora_args, args)
    except LltError as e:
        print(f"llt train: error: {e}", file=sys.stderr)
        return 2
    rc = _train(trainer, args)
    _leave_process_group()
    return rc


def _leave_process_group() -> None:
    """Every rank waits for the others, then the process group is torn down. A rank that
    exits while another is still writing reports would otherwise take gloo's threads down
    mid-use ("terminate called without an active exception", seen once in CI)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _train(trainer, args) -> int:
    """Train, then say how it ended; 0 unless the DeepSpeed JSON contradicts the flags."""
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except ValueError as e:
        # Values HF can only check once the schedule is known (warmup, total steps).
        if "DeepSpeed config values that mismatch" not in str(e):
            raise
        print(f"llt train: error: --deepspeed_config_path {args.deepspeed}: {e}", file=sys.stderr)
        return 2
    if trainer.already_finished is not None:
        print(f"llt train: {args.resume_from_checkpoint} is at step {trainer.already_finished}, the "
              "last step of this run; nothing to train (raise --max_steps or --max_epochs to go on)")
        return 0
    from llt.train.callbacks import PreemptionCallback

    preempt = next(c for c in trainer.callback_handler.callbacks if isinstance(c, PreemptionCallback))
    if preempt.stopped_at is not None:
        if args.should_save:
            import signal
            name = signal.Signals(preempt.received).name if preempt.received else "a signal on another rank"
            print(f"llt train: stopped by {name} after step {preempt.stopped_at}; "
                  f"resumable checkpoint saved; continue with --load_ckpt_path {args.output_dir}")
        return 0
    if args.should_save:
        print(f"llt train: done; run folder {args.output_dir}")
    return 0


def build(model_args, data_args, lora_args, args):
    """Everything up to `trainer.train()`; every check that can fail runs here."""
    from llt.train.callbacks import (CorpusMixCallback, LossReportCallback, PreemptionCallback,
                                     SaveScheduleCallback, ThroughputCallback, peak_tflops)
    from llt.train.checks import check_data_fits
    from llt.train.collators import make_collator
    from llt.train.data import build_data
    from llt.train.loss import use_chunked_loss
    from llt.train.model import apply_lora, flops_per_token_info, load_model, load_tokenizer
    from llt.train.report import write_run_report
    from llt.train.trainer import LltTrainer

    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING,
                        format="%(message)s")
    tokenizer, new_ids = load_tokenizer(model_args)
    data = build_data(data_args, args)
    use_eval(args, data.eval_set)
    dataset = data.dataset
    model = load_model(model_args, args, tokenizer, new_ids, padded=data_args.padding != "free")
    check_data_fits(dataset, tokenizer, model, data_args, new_ids)
    # Corpora, for per-corpus loss: training's, or the eval set's when it has more.
    n_groups = max(dataset.n_corpora, len(data.eval_set.names) if data.eval_set else 1)
    # Liger's fused linear cross-entropy (--use_liger_kernel, patched in by HF) does the
    # same job in one kernel; llt's chunked loss is the portable default.
    group_loss = bool(model_args.chunked_loss and not args.use_liger_kernel
                      and use_chunked_loss(model, n_groups=n_groups))
    throughput = ThroughputCallback(flops_per_token_info(model), peak_tflops(args.peak_tflops))
    if lora_args.use_lora:
        model = apply_lora(model, lora_args, new_ids)
    callbacks = [LossReportCallback(), SaveScheduleCallback(args.save_epochs, args.save_final),
                 PreemptionCallback()]
    mix = CorpusMixCallback(dataset.names) if dataset.n_corpora > 1 else None
    trainer = LltTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        data_collator=make_collator(data_args, dataset, tokenizer, model, n_groups),
        callbacks=callbacks, shuffle_data=data_args.shuffle_data, throughput=throughput,
        plan=data.plan, eval_dataset=data.eval_set, mix=mix, group_loss=group_loss)
    if args.resume_from_checkpoint:
        args.resume_from_checkpoint = trainer.plan_resume(args.resume_from_checkpoint)
    # First, so the figures it adds reach the printed line and every report_to backend.
    trainer.callback_handler.callbacks.insert(0, throughput)
    if mix is not None:
        trainer.callback_handler.callbacks.insert(1, mix)
    if args.should_save:
        save_config(args.output_dir, model_args=model_args, data_args=data_args,
                    lora_args=lora_args, args=args)
        write_run_report(args.output_dir, args, data, model)
    return trainer


def use_eval(args, eval_set) -> None:
    """Evaluate every --eval_steps (default: --logging_steps) when there is held-out data,
    and record the best checkpoint by eval loss."""
    from transformers.trainer_utils import IntervalStrategy

    if eval_set is None:
        if args.eval_strategy != IntervalStrategy.NO:
            raise ConfigError(f"--eval_strategy {args.eval_strategy.value}: no held-out data; "
                              "give --eval_data_path or --eval_split")
        return
    if args.eval_strategy == IntervalStrategy.NO:
        args.eval_strategy = IntervalStrategy.STEPS
    if args.eval_strategy == IntervalStrategy.STEPS and not args.eval_steps:
        args.eval_steps = args.logging_steps
    if args.metric_for_best_model is None:
        args.metric_for_best_model, args.greater_is_better = "loss", False


def save_config(folder: str, **groups) -> Path:
    """The resolved configuration, every flag of every group, as `llt_config.json`."""
    out = {}
    for name, obj in groups.items():
        out[name] = obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)
    path = Path(folder) / "llt_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    return path

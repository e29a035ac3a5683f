"""Everything up to `trainer.train()` that every training method shares.

    trainer = build_trainer(["--model_path", M, "--data_path", D, ...])   # SFT
    trainer = build_trainer(argv, method="dpo")                          # preference tuning

Reads like a table of contents: flags, tokenizer, data, model, the method's loss, collator,
LoRA, callbacks, trainer. Every check that can fail runs here, before the first step; what
differs between methods comes from their `llt.train.methods.TrainingMethod`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from llt.runs.folder import CONFIG
from llt.train.methods import RunArgs, TrainingMethod, get_method


def build_trainer(argv: list[str] | None = None, method: str | TrainingMethod = "train"):
    """Parse `argv` (flags and `--config FILE.yaml`, as the recipe takes them) and build the
    method's trainer, ready to `train()`; raises `llt.errors.LltError` on bad input."""
    from llt.train.parse import parse_run

    method = get_method(method) if isinstance(method, str) else method
    return build(parse_run(argv, method), method)


def build(run: RunArgs, method: TrainingMethod):
    """The trainer for parsed flags `run` under `method`."""
    from llt.data.collate import make_collator
    from llt.model.attention import is_varlen
    from llt.model.loading import (flops_per_token_info, load_model, load_training_tokenizer,
                                   pick_attn_implementation)
    from llt.model.lora import apply_lora
    from llt.model.quant import quantization_config
    from llt.train.callbacks import CorpusMixCallback, PreemptionCallback, ThroughputCallback, peak_tflops
    from llt.train.checks import check_world
    from llt.train.preflight import check_ranks_agree, check_storage, fingerprint
    from llt.train.setup import prepare_run
    from llt.train.watchdog import start as start_watchdog
    from llt.train.user_callbacks import load_callbacks
    from transformers import set_seed

    model_args, data_args, lora_args, args = run.model, run.data, run.lora, run.train
    prepare_run(args)
    check_world(args)
    method.check_flags(run)
    preemption = PreemptionCallback()
    user_callbacks = load_callbacks(args.callbacks, preemption.fail)  # before any data work
    data_paths = method.data_paths(run)
    storage = "one process"
    if args.world_size > 1:  # every rank runs the same thing, on storage it has checked, or none starts
        check_ranks_agree(fingerprint(_config_groups(run), model_args.model_path, data_paths,
                                      args.resume_from_checkpoint, args.world_size))
        storage = check_storage(args)
        start_watchdog(args)  # a dead peer ends this process within --node_timeout
    tokenizer, new_ids = load_training_tokenizer(model_args)
    quantization = quantization_config(model_args, args, lora_args.use_lora)  # fails before any data work
    # Seed now, not only in Trainer.__init__ (after the model exists): LoRA's A matrices are
    # drawn while the model is built, and two runs with one --seed must start alike.
    set_seed(args.seed)
    data = method.load_data(run, tokenizer)
    attn = pick_attn_implementation(model_args.attn_implementation, args.use_cpu, data_args.padding != "free")
    model = load_model(model_args, args, tokenizer, new_ids, attn, quantization=quantization, head=method.head)
    method.check_fits(data, tokenizer, model, new_ids)
    group_loss = method.install_loss(model, run, data.n_groups)
    collator = method.wrap_collator(make_collator(data_args.padding, data.dataset, tokenizer.pad_token_id,
                                                  is_varlen(attn), attn, data_args.pad_to_multiple_of,
                                                  data.n_groups, **method.collator_options()))
    throughput = ThroughputCallback(flops_per_token_info(model), peak_tflops(args.peak_tflops))
    if lora_args.use_lora:
        model = apply_lora(model, lora_args, new_ids, method.lora_task_type)
    mix = CorpusMixCallback(data.names) if data.dataset.n_corpora > 1 else None
    common = dict(model=model, args=args, train_dataset=data.dataset, processing_class=tokenizer,
                  data_collator=collator, callbacks=_callbacks(args, preemption, user_callbacks),
                  shuffle_data=data_args.shuffle_data, throughput=throughput, plan=data.plan,
                  eval_dataset=data.eval_set, mix=mix, preemption=preemption, group_loss=group_loss)
    trainer = method.trainer(run, model, common)
    trainer.node_local = storage == "node-local"  # every node keeps a copy of each checkpoint
    return _ready(trainer, [mix, throughput], data, model, run.groups())


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


def _callbacks(args, preemption, user: list) -> list:
    """llt's callbacks, then the user's (they see llt's figures), then the save schedule
    (it saves when any of them stops the run)."""
    from llt.train.callbacks import LossReportCallback, ProgressLineCallback, SaveScheduleCallback

    callbacks = [LossReportCallback(), preemption]
    if getattr(args, "progress_lines", False):
        callbacks.append(ProgressLineCallback())
    return callbacks + user + [SaveScheduleCallback(args.save_epochs, args.save_final)]


def _config_groups(run: RunArgs) -> dict:
    return {name: (obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)) for name, obj in run.groups().items()}


def save_config(folder: str, **groups) -> Path:
    """The resolved configuration, every flag of every group, as `llt_config.json`."""
    out = {}
    for name, obj in groups.items():
        out[name] = obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)
    path = Path(folder) / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    return path


"""`LltTrainer`: HF's Trainer fed by llt's sampler, with an exact, O(1) data resume.

Public-hook overrides, here:
* `get_train_dataloader`: llt's rank-sharded, seeded sampler (see `llt.data.sampler`);
* `compute_loss`: takes the collator's extras off the batch (`BatchExtras`) and hands the
  token counts and per-corpus losses to the throughput and mix callbacks;
* `evaluate`: the token-weighted held-out loss (`llt.train.evaluate`), and the best step;
* `train`: resume checks before any work, and a finished run stays finished.

The private-hook overrides (atomic checkpoints, the saved data position) are in
`llt.train.hf_hooks`; the pure resume logic in `llt.train.resume`.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.data_loader import DataLoaderShard
from transformers import Trainer

from llt.data.collate import BatchExtras
from llt.data.sampler import EpochBatchSampler
from llt.errors import ConfigError
from llt.runs.folder import DATA_STATE, TRAINER_STATE, newest_checkpoint
from llt.train.hf_hooks import HfHookOverrides
from llt.train.resume import RunShape, data_identity, resume_position, total_steps


class LltTrainer(HfHookOverrides, Trainer):
    """`Trainer` plus: `plan` (each epoch's samples, `llt.data.corpora.EpochPlan`),
    `throughput` and `mix` (the callbacks fed per batch), `preemption` (whose stop makes
    the next save resumable) and `group_loss` (the model's loss returns per-corpus sums)."""

    def __init__(self, *args, shuffle_data: bool = True, throughput=None, plan=None,
                 mix=None, preemption=None, group_loss: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.shuffle_data = shuffle_data
        self.throughput, self.mix, self.preemption = throughput, mix, preemption
        self.plan = plan
        self.group_loss = group_loss
        self.sampler: EpochBatchSampler | None = None
        self.already_finished: int | None = None
        self._resume_position: tuple[int, int] | None = None

    @property
    def force_resumable(self) -> bool:
        """A stop by signal saves optimizer, RNG and data position whatever --save_optimizer says."""
        return self.preemption is not None and self.preemption.stopped_at is not None

    def run_shape(self) -> RunShape:
        args = self.args
        return RunShape(
            n_samples=self.plan.size if self.plan is not None else len(self.train_dataset),
            world_size=args.world_size, batch_size=self.args.train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, shuffle=self.shuffle_data,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            data=data_identity(self.train_dataset), plan=self.plan.identity() if self.plan else None)

    # ---- data ----
    def loader(self, dataset, sampler, collate_fn=None) -> DataLoaderShard:
        """A loader over llt's rank-aware `sampler`, for training and evaluation alike.

        Built directly rather than through accelerator.prepare, which would shard the
        batches across ranks a second time and, with even_batches, repeat samples at the
        end of an epoch."""
        args = self.args
        extra = {}
        if args.dataloader_num_workers > 0:
            extra = {"prefetch_factor": args.dataloader_prefetch_factor,
                     "persistent_workers": args.dataloader_persistent_workers}
        return DataLoaderShard(
            dataset, device=args.device if self.accelerator.device_placement else None,
            batch_sampler=sampler, collate_fn=collate_fn or self.data_collator,
            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory, **extra)

    def get_train_dataloader(self):
        shape = self.run_shape()
        self.sampler = EpochBatchSampler(
            self.plan if self.plan is not None else shape.n_samples, self.args.train_batch_size,
            world_size=shape.world_size, rank=self.args.process_index, shuffle=self.shuffle_data,
            seed=shape.seed)
        if self._resume_position:
            self.sampler.resume_at(*self._resume_position)
        return self.loader(self.train_dataset, self.sampler)

    # ---- training ----
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        extras = BatchExtras.pop(inputs, model_takes_groups=self.group_loss)
        if model.training:
            if extras.counts is not None and self.throughput is not None:
                self.throughput.observe(extras.counts)
            if extras.corpus_counts is not None and self.mix is not None:
                self.mix.observe_counts(extras.corpus_counts)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training and self.mix is not None and isinstance(outputs, dict) \
                and outputs.get("group_loss") is not None:
            self.mix.observe_loss(outputs["group_loss"])
        return (loss, outputs) if return_outputs else loss

    # ---- evaluation ----
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The held-out loss (see `llt.train.evaluate`), logged, and the best step by
        `metric_for_best_model` recorded."""
        eval_set = self.eval_dataset if eval_dataset is None else eval_dataset
        if eval_set is None:
            return {}
        args = self.args
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        metrics = self.held_out_metrics(model, eval_set, metric_key_prefix)
        key = args.metric_for_best_model or "loss"
        value = metrics.get(key if key.startswith(metric_key_prefix) else f"{metric_key_prefix}_{key}")
        if value is not None and (self.state.best_metric is None or (
                value > self.state.best_metric if args.greater_is_better else value < self.state.best_metric)):
            # HF records the best step only when saving by steps; llt always does.
            self.state.best_global_step = self.state.global_step
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics)
        return metrics

    def held_out_metrics(self, model, eval_set, prefix: str) -> dict:
        from llt.train.evaluate import held_out_loss

        return held_out_loss(self, model, eval_set, prefix)

    # ---- resume ----
    def plan_resume(self, path: str) -> str:
        """Check that `path` (a checkpoint or a run folder) can resume this run exactly and
        return the checkpoint to load; called before training so a bad resume fails fast."""
        ckpt = newest_checkpoint(path)
        state_file = ckpt / DATA_STATE
        if not state_file.is_file():
            raise ConfigError(
                f"--load_ckpt_path {ckpt}: saved without --save_optimizer, so it holds weights but "
                "no optimizer, scheduler, RNG or data position; start a new run from its weights "
                f"with --model_path {ckpt}")
        saved = json.loads(state_file.read_text())
        self._resume_position = resume_position(ckpt, saved, self.run_shape(), self.is_deepspeed_enabled)
        return str(ckpt)

    def planned_steps(self) -> int:
        """The optimizer steps this run trains to, as HF counts them."""
        return total_steps(self.run_shape(), self.args.num_train_epochs, self.args.max_steps)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint and self._resume_position is None:
            resume_from_checkpoint = self.plan_resume(resume_from_checkpoint)
        if resume_from_checkpoint:
            done = json.loads((Path(resume_from_checkpoint) / TRAINER_STATE).read_text())["global_step"]
            if done >= self.planned_steps():
                # HF would run one more step before noticing; a finished run stays finished.
                self.already_finished = done
                return None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

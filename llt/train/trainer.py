"""`LltTrainer`: HF's Trainer fed by llt's sampler, with an exact, O(1) data resume.

It overrides what the data and the checkpoints need, nothing else:
* `get_train_dataloader`: llt's rank-sharded, seeded sampler (see `llt.data.sampler`);
* `compute_loss`: hands each batch's token counts (and per-corpus counts and losses) to
  the throughput and mix callbacks;
* `evaluate`: the token-weighted held-out loss (`llt.train.evaluate`), and the best step;
* `_save_checkpoint` / `_get_output_dir`: atomic checkpoint folders with the data position
  and the loss report inside, and rotation that never deletes the newest or the best;
* `train` / `_init_training_state`: resume checks, and the saved data position (which
  survives a change in the number of processes) instead of one derived from the step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from accelerate.data_loader import DataLoaderShard
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from llt.data.manifest import fsync_dir
from llt.data.sampler import EpochBatchSampler
from llt.runs import checkpoints
from llt.train.config import ConfigError

DATA_STATE = "llt_data_state.json"
STAGING = ".partial"  # checkpoints are written here, then renamed into the run folder


def newest_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a checkpoint, else its newest `checkpoint-N` child."""
    path = Path(path)
    if STAGING in path.parts:
        raise ConfigError(f"--load_ckpt_path {path}: an unfinished checkpoint (its save was "
                          "interrupted); pass the run folder to take its newest complete one")
    if (path / "trainer_state.json").is_file():
        return path
    ckpts = checkpoints(path)
    if not ckpts:
        raise ConfigError(f"--load_ckpt_path {path}: not a checkpoint, and holds no checkpoint-N folder")
    return ckpts[-1]


class LltTrainer(Trainer):
    def __init__(self, *args, shuffle_data: bool = True, throughput=None, plan=None,
                 mix=None, group_loss: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.shuffle_data = shuffle_data
        self.throughput = throughput
        self.plan = plan  # each epoch's samples (llt.data.mixture.EpochPlan); None: all, once
        self.mix = mix  # per-corpus tokens and loss (CorpusMixCallback)
        self.group_loss = group_loss  # the model's loss returns per-corpus sums
        self.sampler: EpochBatchSampler | None = None
        self.already_finished: int | None = None
        self._resume_position: tuple[int, int] | None = None

    # ---- data ----
    def get_train_dataloader(self):
        args = self.args
        self.sampler = EpochBatchSampler(
            self.plan if self.plan is not None else len(self.train_dataset), self._train_batch_size,
            world_size=args.world_size, rank=args.process_index, shuffle=self.shuffle_data,
            seed=args.data_seed if args.data_seed is not None else args.seed)
        if self._resume_position:
            self.sampler.resume_at(*self._resume_position)
        extra = {}
        if args.dataloader_num_workers > 0:
            extra = {"prefetch_factor": args.dataloader_prefetch_factor,
                     "persistent_workers": args.dataloader_persistent_workers}
        # Built directly rather than through accelerator.prepare, which would shard the
        # batches across ranks a second time (our sampler is already rank-aware) and, with
        # even_batches, repeat samples at the end of an epoch.
        return DataLoaderShard(
            self.train_dataset, device=args.device if self.accelerator.device_placement else None,
            batch_sampler=self.sampler, collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory, **extra)

    def data_position(self) -> tuple[int, int]:
        """(epoch, micro-steps of it done on each rank), from HF's fractional `state.epoch`
        (epoch + micro-steps done / micro-steps per epoch), which follows the resumed
        position even when the number of processes changed."""
        per_epoch = len(self.sampler)
        epoch = int(math.floor((self.state.epoch or 0.0) + 1e-9))
        step = round(((self.state.epoch or 0.0) - epoch) * per_epoch)
        if step >= per_epoch:
            epoch, step = epoch + 1, 0
        return epoch, step

    def n_samples(self) -> int:
        """Samples per epoch."""
        return self.plan.size if self.plan is not None else len(self.train_dataset)

    # ---- training ----
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        counts = inputs.pop("llt_counts", None)  # the model must not see these
        corpus_counts = inputs.pop("llt_corpus_counts", None)
        groups = inputs.pop("llt_groups", None)
        if groups is not None and self.group_loss:
            inputs["llt_groups"] = groups
        if model.training:
            if counts is not None and self.throughput is not None:
                self.throughput.observe(counts)
            if corpus_counts is not None and self.mix is not None:
                self.mix.observe_counts(corpus_counts)
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
        from llt.train.evaluate import held_out_loss

        args = self.args
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        metrics = held_out_loss(self, model, eval_set, metric_key_prefix)
        key = args.metric_for_best_model or "loss"
        value = metrics.get(key if key.startswith(metric_key_prefix) else f"{metric_key_prefix}_{key}")
        if value is not None and (self.state.best_metric is None or (
                value > self.state.best_metric if args.greater_is_better else value < self.state.best_metric)):
            # HF records the best step only when saving by steps; llt always does.
            self.state.best_global_step = self.state.global_step
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics)
        return metrics

    # ---- checkpoints ----
    _staging: Path | None = None

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being written, HF's save path points into the staging folder.
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """HF's checkpoint, made atomic: every rank writes into `<run>/.partial/checkpoint-N`,
        then rank 0 renames the finished folder to `<run>/checkpoint-N`. A process killed
        mid-save leaves only the staging folder, which nothing loads and the next save
        clears; `checkpoint-N` folders are always complete."""
        args = self.args
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / STAGING
        if args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
            staging.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        if args.should_save:
            self._write_extras(staging / name)
        self.accelerator.wait_for_everyone()  # every rank's shards are on disk
        if args.should_save:
            final = run_dir / name
            if final.exists():  # the same step saved again: replace it whole
                old = staging / f"replaced-{name}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging / name, final)
            fsync_dir(run_dir)
            self._rotate(run_dir)
            try:
                staging.rmdir()
            except OSError:
                pass
        self.accelerator.wait_for_everyone()

    def _write_extras(self, folder: Path) -> None:
        from llt.train.callbacks import write_loss_report

        best = self.state.best_global_step
        best_dir = folder.parent.parent / f"{PREFIX_CHECKPOINT_DIR}-{best}"
        if best and (best == self.state.global_step or best_dir.is_dir()):
            # HF records the best checkpoint under the staging folder it saved into; point
            # it at the final name (this one, once renamed, or an earlier one).
            self.state.best_model_checkpoint = str(best_dir)
            self.state.save_to_json(str(folder / "trainer_state.json"))
        write_loss_report(folder, self.state)
        if self.args.save_only_model or self.sampler is None:
            return
        state = self.sampler.state(*self.data_position())
        state.update(gradient_accumulation_steps=self.args.gradient_accumulation_steps,
                     data=_data_identity(self.train_dataset),
                     plan=self.plan.identity() if self.plan else None)
        (folder / DATA_STATE).write_text(json.dumps(state, indent=1))

    def _rotate(self, run_dir: Path) -> None:
        """Keep the newest `save_total_limit` complete checkpoints. The one just renamed
        into place is the newest, so the last complete checkpoint is never deleted; older
        ones are moved out of sight before being deleted, so a kill mid-delete leaves no
        half checkpoint under a `checkpoint-N` name."""
        limit = self.args.save_total_limit
        if not limit or limit <= 0:
            return
        ckpts = checkpoints(run_dir)
        best = self.state.best_model_checkpoint
        if best and Path(best) in ckpts[:-limit]:
            ckpts.remove(Path(best))  # the best by eval loss is kept beside the newest ones
        for old in ckpts[:-limit]:
            doomed = run_dir / STAGING / f"deleting-{old.name}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def plan_resume(self, path: str) -> str:
        """Check that `path` (a checkpoint or a run folder) can resume this run exactly and
        return the checkpoint to load; called before training so a bad resume fails fast."""
        ckpt = newest_checkpoint(path)
        self._resume_position = self._check_resumable(ckpt)
        return str(ckpt)

    def total_steps(self) -> int:
        """Optimizer steps this run trains to, as HF computes them."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        batches = math.ceil(self.n_samples() / (self._train_batch_size * self.args.world_size))
        per_epoch = math.ceil(batches / self.args.gradient_accumulation_steps)
        return math.ceil(self.args.num_train_epochs * per_epoch)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint and self._resume_position is None:
            resume_from_checkpoint = self.plan_resume(resume_from_checkpoint)
        if resume_from_checkpoint:
            done = json.loads((Path(resume_from_checkpoint) / "trainer_state.json").read_text())["global_step"]
            if done >= self.total_steps():
                # HF would run one more step before noticing; a finished run stays finished.
                self.already_finished = done
                return None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _check_resumable(self, ckpt: Path) -> tuple[int, int]:
        state_file = ckpt / DATA_STATE
        if not state_file.is_file():
            raise ConfigError(
                f"--load_ckpt_path {ckpt}: saved without --save_optimizer, so it holds weights but "
                "no optimizer, scheduler, RNG or data position; start a new run from its weights "
                f"with --model_path {ckpt}")
        saved = json.loads(state_file.read_text())
        args = self.args
        now = {"n_samples": self.n_samples(), "world_size": args.world_size,
               "batch_size": self._train_batch_size,
               "gradient_accumulation_steps": args.gradient_accumulation_steps,
               "shuffle": self.shuffle_data,
               "seed": args.data_seed if args.data_seed is not None else args.seed,
               "data": _data_identity(self.train_dataset),
               "plan": self.plan.identity() if self.plan else None}
        flags = {"n_samples": "--data_path/--eval_split", "data": "--data_path",
                 "plan": "--data_path corpora or weights", "world_size": "the number of processes",
                 "batch_size": "--per_device_train_batch_size",
                 "gradient_accumulation_steps": "--gradient_accumulation_steps",
                 "shuffle": "--shuffle_data", "seed": "--seed/--data_seed"}
        changed = [f"{flags[k]} ({saved.get(k)!r} -> {v!r})" if k != "data" else "--data_path (the shards differ)"
                   for k, v in now.items() if saved.get(k) != v and k != "world_size"
                   and not (k == "plan" and "plan" not in saved)]
        if changed:
            raise ConfigError(f"--load_ckpt_path {ckpt}: cannot resume exactly, changed since the "
                              f"checkpoint: {'; '.join(changed)}")
        epoch, step = int(saved["epoch"]), int(saved["step"])
        if saved["world_size"] != args.world_size:
            step = self._rescale_position(ckpt, saved, epoch)
        return epoch, step

    def _rescale_position(self, ckpt: Path, saved: dict, epoch: int) -> int:
        """The micro-step to resume at with a different number of processes. The global
        sample order depends only on (seed, epoch), so the position is the number of
        samples of this epoch already trained, in units of the new global batch."""
        old, new = saved["world_size"], self.args.world_size
        if self.is_deepspeed_enabled:
            raise ConfigError(
                f"--load_ckpt_path {ckpt}: saved by {old} processes, resumed by {new}; DeepSpeed ZeRO "
                f"partitions the optimizer state per rank, so resume with {old} processes, or convert "
                "the checkpoint with DeepSpeed's ds_to_universal.py and set "
                "\"checkpoint\": {\"load_universal\": true} in the DeepSpeed JSON")
        seen = int(saved["samples_seen_in_epoch"])
        per_update = self._train_batch_size * new * self.args.gradient_accumulation_steps
        if seen % per_update:
            raise ConfigError(
                f"--load_ckpt_path {ckpt}: {seen} samples of epoch {epoch} were trained by {old} "
                f"processes, not a whole number of optimizer steps of {per_update} samples with {new}; "
                f"resume with {old} processes, or with a number that divides {seen // self._train_batch_size} "
                "micro-batches evenly")
        import logging
        logging.getLogger("llt").warning(
            "llt: resuming %d-process checkpoint with %d processes: epoch %d continues after its "
            "first %d samples (model and optimizer state are replicated under data parallel)",
            old, new, epoch, seen)
        return seen // (self._train_batch_size * new)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs,
                             resume_from_checkpoint, trial):
        """HF derives the data position from `global_step`, which only holds while the
        number of processes is unchanged; llt's saved position holds either way."""
        epochs, steps = super()._init_training_state(max_steps, num_update_steps_per_epoch,
                                                     num_train_epochs, resume_from_checkpoint, trial)
        if resume_from_checkpoint is not None and self._resume_position is not None:
            epochs, steps = self._resume_position
        return epochs, steps


def _data_identity(dataset) -> list:
    """What identifies the training data: each shard's name and counts, in order."""
    return [[p.parent.name + "/" + p.name, h["n_samples"], h["n_tokens"]]
            for p, h in zip(dataset.paths, dataset.headers)]

"""The only overrides of private `transformers.Trainer` methods, in one place.

HF offers no public hook for three things llt needs, so `HfHookOverrides` replaces these
private methods; each says which HF behaviour it changes and why. `HOOKS` names them with
the parameters llt relies on, and `tests/test_hf_hooks.py` fails loudly when a
transformers upgrade renames one, changes its parameters, or stops calling it.

`LltTrainer` (llt.train.trainer) mixes this class in before `Trainer`; the state it reads
(`self.sampler`, `self.run_shape()`, `self.plan`, `self._resume_position`,
`self.force_resumable`) is the trainer's.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from llt.runs.folder import DATA_STATE, TRAINER_STATE, checkpoint_name
from llt.runs.history import write_loss_report
from llt.train import checkpointing
from llt.train.resume import data_position

# transformers names llt uses beyond its documented API, outside these overrides: each is
# checked by tests/test_hf_hooks.py the way the hooks are (the rest llt uses is public API:
# AttentionInterface/AttentionMaskInterface.register, MODEL_FOR_CAUSAL_LM_MAPPING,
# Trainer.loss_is_scaled_for_ga, TrainingArguments.train_batch_size).
RELIED_ON = {
    "AttentionMaskInterface['flash_attention_2']": "llt_sdpa_varlen takes flash-attention's mask function "
                                                    "(no 4D mask: boundaries come as cu_seq_lens)",
    "TrainingArguments.hf_deepspeed_config.mismatches": "DeepSpeed JSON values that contradict the flags, "
                                                         "reported before any work (llt.train.config)",
}

# name -> the parameters (after self) that llt's override relies on, in order.
HOOKS = {
    "_get_output_dir": ("trial",),
    "_save_checkpoint": ("model", "trial"),
    "_init_training_state": ("max_steps", "num_update_steps_per_epoch", "num_train_epochs",
                             "resume_from_checkpoint", "trial"),
}


class HfHookOverrides:
    _staging: Path | None = None  # set while a checkpoint is being written
    node_local = False  # the run folder is each node's own disk: each keeps a copy (llt.train.node_copies)

    def _get_output_dir(self, trial) -> str:
        """Replaces: HF's save path is the run folder. While a checkpoint is being written,
        llt points it at the staging folder instead (HF's `_save_checkpoint` and
        `save_model` both ask this method where to write), so that the folder becomes
        `checkpoint-N` only once complete."""
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Replaces: HF writes `checkpoint-N` in place, so a kill mid-save leaves a folder
        that looks complete. llt has every rank write into `.partial/checkpoint-N`, adds the
        data position and loss report, then renames it into place (`llt.train.checkpointing`).
        A preemption save is made resumable even without --save_optimizer (HF reads
        `args.save_only_model` inside; it is lifted for that one call)."""
        args = self.args
        run_dir = Path(super()._get_output_dir(trial))
        name = checkpoint_name(self.state.global_step)
        keeper = args.should_save or (self.node_local and args.local_process_index == 0)
        if keeper:
            checkpointing.clear_staging(run_dir, name)
        self.accelerator.wait_for_everyone()
        self._staging = checkpointing.staging_dir(run_dir)
        only_model = args.save_only_model
        args.save_only_model = only_model and not self.force_resumable
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
            args.save_only_model = only_model
        if args.should_save:
            self._write_extras(self._staging_path(run_dir, name), resumable=not only_model or self.force_resumable)
        if not only_model or self.force_resumable:
            self._write_rank_extras(self._staging_path(run_dir, name))
        self.accelerator.wait_for_everyone()  # every rank's shards are on disk
        if self.node_local:
            from llt.train.node_copies import share

            share(self._staging_path(run_dir, name), args)
        if keeper:
            checkpointing.publish(run_dir, name, args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs,
                             resume_from_checkpoint, trial):
        """Replaces: HF derives the data position from `global_step`, which holds only while
        the number of processes is unchanged; llt returns the position saved with the
        checkpoint (rescaled by `llt.train.resume`), which holds either way."""
        epochs, steps = super()._init_training_state(max_steps, num_update_steps_per_epoch,
                                                     num_train_epochs, resume_from_checkpoint, trial)
        if resume_from_checkpoint is not None and self._resume_position is not None:
            epochs, steps = self._resume_position
        return epochs, steps

    def _write_rank_extras(self, folder: Path) -> None:
        """What a method adds to a resumable checkpoint on every rank (GRPO: a generation batch
        part-way through its iterations); nothing by default."""

    # ---- helpers of the overrides ----
    @staticmethod
    def _staging_path(run_dir: Path, name: str) -> Path:
        return checkpointing.staging_dir(run_dir) / name

    def _write_extras(self, folder: Path, resumable: bool) -> None:
        """What llt adds to HF's checkpoint: the best checkpoint under its final name, the
        loss report, and (resumable checkpoints) the sampler's position."""
        best = self.state.best_global_step
        best_dir = folder.parent.parent / f"{PREFIX_CHECKPOINT_DIR}-{best}"
        if best and (best == self.state.global_step or best_dir.is_dir()):
            # HF records the best only when saving by steps, and then under the staging
            # folder it saved into; point it at the final name.
            self.state.best_model_checkpoint = str(best_dir)
            self.state.save_to_json(str(folder / TRAINER_STATE))
        write_loss_report(folder, self.state.log_history)
        if not resumable or self.sampler is None:
            return
        state = self.sampler.state(*data_position(self.state.epoch, len(self.sampler)))
        shape = self.run_shape()
        state.update(gradient_accumulation_steps=shape.gradient_accumulation_steps, data=shape.data,
                     plan=shape.plan)
        (folder / DATA_STATE).write_text(json.dumps(state, indent=1))

"""`LltTrainer`: HF's Trainer fed by llt's sampler, with an exact, O(1) data resume.

It overrides three things: the train DataLoader (llt's rank-sharded, seeded sampler, see
`llt.data.sampler`), `compute_loss` (to hand the batch's token counts to the throughput
callback) and checkpoint saving/resuming (the data position is stored beside the
optimizer state and checked on resume). Everything else is the stock Trainer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from accelerate.data_loader import DataLoaderShard
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from llt.data.sampler import EpochBatchSampler
from llt.train.config import ConfigError

DATA_STATE = "llt_data_state.json"


def newest_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a checkpoint, else its newest `checkpoint-N` child."""
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    ckpts = sorted((p for p in path.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                    if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    if not ckpts:
        raise ConfigError(f"--load_ckpt_path {path}: not a checkpoint, and holds no checkpoint-N folder")
    return ckpts[-1]


class LltTrainer(Trainer):
    def __init__(self, *args, shuffle_data: bool = True, throughput=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shuffle_data = shuffle_data
        self.throughput = throughput
        self.sampler: EpochBatchSampler | None = None
        self._resume_position: tuple[int, int] | None = None

    # ---- data ----
    def get_train_dataloader(self):
        args = self.args
        self.sampler = EpochBatchSampler(
            len(self.train_dataset), self._train_batch_size, world_size=args.world_size,
            rank=args.process_index, shuffle=self.shuffle_data,
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
        """(epoch, micro-steps of it done on each rank) after `state.global_step` updates."""
        per_epoch = math.ceil(len(self.sampler) / self.args.gradient_accumulation_steps)
        epoch, updates = divmod(self.state.global_step, per_epoch)
        return epoch, min(updates * self.args.gradient_accumulation_steps, len(self.sampler))

    # ---- training ----
    def compute_loss(self, model, inputs, *args, **kwargs):
        counts = inputs.pop("llt_counts", None)  # the model must not see it
        if counts is not None and model.training and self.throughput is not None:
            self.throughput.observe(counts)
        return super().compute_loss(model, inputs, *args, **kwargs)

    # ---- checkpoints ----
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.save_only_model or not self.args.should_save or self.sampler is None:
            return
        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        state = self.sampler.state(*self.data_position())
        state.update(gradient_accumulation_steps=self.args.gradient_accumulation_steps,
                     data=_data_identity(self.train_dataset))
        (folder / DATA_STATE).write_text(json.dumps(state, indent=1))

    def plan_resume(self, path: str) -> str:
        """Check that `path` (a checkpoint or a run folder) can resume this run exactly and
        return the checkpoint to load; called before training so a bad resume fails fast."""
        ckpt = newest_checkpoint(path)
        self._resume_position = self._check_resumable(ckpt)
        return str(ckpt)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint and self._resume_position is None:
            resume_from_checkpoint = self.plan_resume(resume_from_checkpoint)
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
        now = {"n_samples": len(self.train_dataset), "world_size": args.world_size,
               "batch_size": self._train_batch_size,
               "gradient_accumulation_steps": args.gradient_accumulation_steps,
               "shuffle": self.shuffle_data,
               "seed": args.data_seed if args.data_seed is not None else args.seed,
               "data": _data_identity(self.train_dataset)}
        flags = {"n_samples": "--data_path", "data": "--data_path", "world_size": "the number of processes",
                 "batch_size": "--per_device_train_batch_size",
                 "gradient_accumulation_steps": "--gradient_accumulation_steps",
                 "shuffle": "--shuffle_data", "seed": "--seed/--data_seed"}
        changed = [f"{flags[k]} ({saved.get(k)!r} -> {v!r})" if k != "data" else "--data_path (the shards differ)"
                   for k, v in now.items() if saved.get(k) != v]
        if changed:
            raise ConfigError(f"--load_ckpt_path {ckpt}: cannot resume exactly, changed since the "
                              f"checkpoint: {'; '.join(changed)}")
        return int(saved["epoch"]), int(saved["step"])


def _data_identity(dataset) -> list:
    """What identifies the training data: each shard's name and counts, in order."""
    return [[p.parent.name + "/" + p.name, h["n_samples"], h["n_tokens"]]
            for p, h in zip(dataset.paths, dataset.headers)]

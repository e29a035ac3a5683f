"""Exact resume, as plain functions over dicts: what a checkpoint records about the data
order, whether a new run can go on from it, and where in the epoch it goes on.

The sample order depends only on (seed, epoch) and the samples (`llt.data.sampler`), so a
checkpoint's data position is (epoch, micro-steps done), plus the identity of everything
that shapes the order. A resume with any of it changed is refused, naming the flag; a
change in the number of processes is allowed under data parallel, the position then
rescaled to the new global batch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from llt.data.sampler import ORDER_VERSION
from llt.errors import ConfigError

log = logging.getLogger("llt")

# Each recorded value with the flag that changes it.
FLAGS = {"n_samples": "--data_path/--eval_split", "data": "--data_path",
         "plan": "--data_path corpora or weights", "world_size": "the number of processes",
         "batch_size": "--per_device_train_batch_size",
         "gradient_accumulation_steps": "--gradient_accumulation_steps",
         "shuffle": "--shuffle_data", "seed": "--seed/--data_seed", "order": "llt's sample order"}


@dataclass(frozen=True)
class RunShape:
    """What this run's sample order and steps depend on, as it is now."""

    n_samples: int  # per epoch
    world_size: int
    batch_size: int  # per device
    gradient_accumulation_steps: int
    shuffle: bool
    seed: int
    data: list  # `data_identity` of the training shards
    plan: dict | None  # the mixture plan's identity
    order: int = ORDER_VERSION  # how the sample order is drawn (`llt.data.sampler`)

    def recorded(self) -> dict:
        return {k: getattr(self, k) for k in FLAGS}


def data_identity(dataset) -> list:
    """What identifies the training data: each shard's name and counts, in order."""
    return [[p.parent.name + "/" + p.name, h["n_samples"], h["n_tokens"]]
            for p, h in zip(dataset.paths, dataset.headers)]


def data_position(epoch_float: float, per_epoch: int) -> tuple[int, int]:
    """(epoch, micro-steps of it done on each rank) from HF's fractional `state.epoch`
    (epoch + micro-steps done / micro-steps per epoch), which follows the resumed position
    even when the number of processes changed.

    Examples:
        >>> data_position(1.5, 10), data_position(2.0, 10), data_position(0.9999999999, 10)
        ((1, 5), (2, 0), (1, 0))
    """
    epoch = int(math.floor((epoch_float or 0.0) + 1e-9))
    step = round(((epoch_float or 0.0) - epoch) * per_epoch)
    if step >= per_epoch:
        epoch, step = epoch + 1, 0
    return epoch, step


def total_steps(shape: RunShape, num_train_epochs: float, max_steps: int) -> int:
    """Optimizer steps the run trains to, as HF computes them.

    Examples:
        >>> shape = RunShape(100, 2, 4, 2, True, 0, [], None)
        >>> total_steps(shape, 3, -1), total_steps(shape, 3, 7)
        (21, 7)
    """
    if max_steps > 0:
        return max_steps
    batches = math.ceil(shape.n_samples / (shape.batch_size * shape.world_size))
    per_epoch = math.ceil(batches / shape.gradient_accumulation_steps)
    return math.ceil(num_train_epochs * per_epoch)


def changed_since(saved: dict, now: RunShape) -> list[str]:
    """The flags whose values differ from the checkpoint's (the number of processes aside).

    Examples:
        >>> now = RunShape(100, 1, 4, 1, True, 0, [], None)
        >>> changed_since({**now.recorded(), "seed": 1, "world_size": 2}, now)
        ['--seed/--data_seed (1 -> 0)']
    """
    out = []
    for key, value in now.recorded().items():
        if key == "world_size" or saved.get(key) == value or (key == "plan" and "plan" not in saved):
            continue
        if key == "order":
            out.append(f"llt's sample order (the checkpoint's is version {saved.get(key, 1)}, from an llt "
                       f"that shuffled with a permutation array per epoch; this llt draws version {value} "
                       "without one, so the rest of the epoch would differ); finish the run with the llt "
                       "that saved it, or start a new run from its weights with --model_path")
            continue
        out.append("--data_path (the shards differ)" if key == "data"
                   else f"{FLAGS[key]} ({saved.get(key)!r} -> {value!r})")
    return out


def resume_position(ckpt: Path, saved: dict, now: RunShape, deepspeed: bool) -> tuple[int, int]:
    """The (epoch, micro-step) a run shaped `now` resumes at from a checkpoint's data state
    `saved`; a `ConfigError` naming the flag when it cannot resume exactly."""
    changed = changed_since(saved, now)
    if changed:
        raise ConfigError(f"--load_ckpt_path {ckpt}: cannot resume exactly, changed since the "
                          f"checkpoint: {'; '.join(changed)}")
    epoch, step = int(saved["epoch"]), int(saved["step"])
    if saved["world_size"] != now.world_size:
        step = rescaled_step(ckpt, saved, now, deepspeed)
    return epoch, step


def rescaled_step(ckpt: Path, saved: dict, now: RunShape, deepspeed: bool) -> int:
    """The micro-step to resume at with a different number of processes. The global
    sample order depends only on (seed, epoch), so the position is the number of samples
    of this epoch already trained, in units of the new global batch.

    Examples:
        >>> now = RunShape(100, 1, 4, 1, True, 0, [], None)
        >>> rescaled_step(Path("c"), {"world_size": 2, "epoch": 0, "samples_seen_in_epoch": 48}, now, False)
        12
    """
    old, new, epoch = saved["world_size"], now.world_size, saved["epoch"]
    if deepspeed:
        raise ConfigError(
            f"--load_ckpt_path {ckpt}: saved by {old} processes, resumed by {new}; DeepSpeed ZeRO "
            f"partitions the optimizer state per rank, so resume with {old} processes, or convert "
            "the checkpoint with DeepSpeed's ds_to_universal.py and set "
            "\"checkpoint\": {\"load_universal\": true} in the DeepSpeed JSON")
    seen = int(saved["samples_seen_in_epoch"])
    per_update = now.batch_size * new * now.gradient_accumulation_steps
    if seen % per_update:
        raise ConfigError(
            f"--load_ckpt_path {ckpt}: {seen} samples of epoch {epoch} were trained by {old} "
            f"processes, not a whole number of optimizer steps of {per_update} samples with {new}; "
            f"resume with {old} processes, or with a number that divides {seen // now.batch_size} "
            "micro-batches evenly")
    log.warning("llt: resuming %d-process checkpoint with %d processes: epoch %d continues after its "
                "first %d samples (model and optimizer state are replicated under data parallel)",
                old, new, epoch, seen)
    return seen // (now.batch_size * new)

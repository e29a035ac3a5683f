"""The run folder, the one place that knows its layout: file names, its complete
checkpoints, the newest, the best, and what a path given on the command line names.

    <output_path>/<save_name>-<YYYYmmdd-HHMMSS>/
        checkpoint-N/            complete checkpoints (trainer_state.json inside)
        .partial/                a checkpoint being written; never loaded
        llt_config.json llt_env.json llt_data.json loss_history.json loss.png
        run_summary.json runs/   (TensorBoard events)

No torch or transformers import, so `llt plot` and reports stay light.
"""

from __future__ import annotations

import json
from pathlib import Path

from llt.errors import CheckpointError

PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR
STAGING = ".partial"  # checkpoints are written here, then renamed into the run folder
TRAINER_STATE = "trainer_state.json"
DATA_STATE = "llt_data_state.json"  # the sampler's position, in resumable checkpoints
CONFIG = "llt_config.json"
HISTORY = "loss_history.json"
MODEL_FILES = ("config.json", "adapter_config.json")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}-{step}"


def step_of(checkpoint: Path) -> int:
    """Examples:
        >>> step_of(Path("run/checkpoint-40"))
        40
    """
    return int(Path(checkpoint).name.split("-")[-1])


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / TRAINER_STATE).is_file()


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder (holding `trainer_state.json`), oldest first;
    staging folders and other names are left out."""
    return sorted((p for p in Path(run_dir).glob(f"{PREFIX}-*")
                   if p.name.split("-")[-1].isdigit() and is_checkpoint(p)), key=step_of)


def newest_checkpoint(path: str | Path, flag: str = "--load_ckpt_path") -> Path:
    """`path` itself when it is a checkpoint, else the run folder's newest complete one."""
    path = Path(path)
    if STAGING in path.parts:
        raise CheckpointError(f"{flag} {path}: an unfinished checkpoint (its save was "
                              "interrupted); pass the run folder to take its newest complete one")
    if is_checkpoint(path):
        return path
    ckpts = checkpoints(path)
    if not ckpts:
        raise CheckpointError(f"{flag} {path}: not a checkpoint, and holds no checkpoint-N folder")
    return ckpts[-1]


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's best checkpoint as training recorded it (`best_model_checkpoint` in the
    newest checkpoint's trainer state: the best by `--metric_for_best_model`, eval loss by
    default), or None when no best was recorded or it was not kept."""
    ckpts = checkpoints(run_dir)
    if not ckpts:
        return None
    chosen = json.loads((ckpts[-1] / TRAINER_STATE).read_text()).get("best_model_checkpoint")
    if not chosen:
        return None
    # Recorded as an absolute path; the run folder may have moved since.
    here = Path(run_dir) / Path(chosen).name
    return here if is_checkpoint(here) else None


def resolve(path: str | Path, best: bool = False) -> Path:
    """What a tool's PATH argument names: a checkpoint or model folder as it is, or a run
    folder's newest checkpoint (its best with `best=True`)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint, run folder or model folder")
    if is_checkpoint(p) or any((p / f).is_file() for f in MODEL_FILES):
        return p
    if not checkpoints(p):
        raise CheckpointError(f"{p}: holds no checkpoint-N folder and is not a model folder")
    if best:
        chosen = best_checkpoint(p)
        if chosen is None:
            raise CheckpointError(f"{p}: no best checkpoint recorded (train with --eval_split or "
                                  "--eval_data_path, and save at eval steps)")
        return chosen
    return checkpoints(p)[-1]


def run_config(ckpt: Path) -> dict:
    """The training run's `llt_config.json` (in the checkpoint or the run folder above it)."""
    for folder in (ckpt, ckpt.parent):
        f = folder / CONFIG
        if f.is_file():
            return json.loads(f.read_text())
    return {}


def newest_resumable(output_path: str | Path, save_name: str, run_dir: str | Path | None = None) -> Path | None:
    """The checkpoint a resubmitted command resumes from (`--load_ckpt_path auto`): the
    newest complete, resumable checkpoint (saved with optimizer and data position) of
    `run_dir`, or else of the newest `<save_name>-<stamp>` run folder under `output_path`
    that holds one; None when there is none (the run starts fresh)."""
    import re

    if run_dir is not None:
        folders = [Path(run_dir)]
    else:
        stamp = re.compile(rf"^{re.escape(save_name)}-\d{{8}}-\d{{6}}$")
        root = Path(output_path)
        folders = sorted((p for p in root.iterdir() if p.is_dir() and stamp.match(p.name)),
                         key=lambda p: p.name, reverse=True) if root.is_dir() else []
    for folder in folders:
        resumable = [c for c in checkpoints(folder) if (c / DATA_STATE).is_file()]
        if resumable:
            return resumable[-1]
    return None


def newest_run(output_path: str | Path) -> Path:
    """The most recently written run folder under `output_path`."""
    runs = [p for p in Path(output_path).iterdir() if p.is_dir()]
    if not runs:
        raise CheckpointError(f"{output_path}: holds no run folder")
    return max(runs, key=lambda p: p.stat().st_mtime)

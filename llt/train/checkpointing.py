"""Atomic checkpoints and their rotation, as plain steps over paths.

Every rank writes into `<run>/.partial/checkpoint-N`; once all have finished, rank 0
renames the folder to `<run>/checkpoint-N` (`publish`). A process killed mid-save leaves
only the staging folder, which nothing loads and the next save clears; `checkpoint-N`
folders are always complete. Rotation (`--save_total_limit`) never deletes the newest
checkpoint or the best one, and moves a doomed folder out of sight before deleting it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from llt.fsutil import replace_dir
from llt.runs.folder import STAGING, checkpoints


def staging_dir(run_dir: Path) -> Path:
    return Path(run_dir) / STAGING


def clear_staging(run_dir: Path, name: str) -> None:
    """Remove what an interrupted save of `name` left, and the trash of an interrupted
    rotation (`deleting-*`) or replacement (`replaced-X`, once `X` is back in the run
    folder: before that it is the only copy); make the staging folder."""
    staging = staging_dir(run_dir)
    shutil.rmtree(staging / name, ignore_errors=True)
    trash = [*staging.glob("deleting-*"), *(p for p in staging.glob("replaced-*")
                                           if (Path(run_dir) / p.name.removeprefix("replaced-")).is_dir())]
    for p in trash:
        shutil.rmtree(p, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)


def publish(run_dir: Path, name: str, limit: int | None, best: str | None) -> None:
    """Rename the complete staged checkpoint into the run folder (replacing one of the
    same step), then rotate."""
    staging = staging_dir(run_dir)
    replace_dir(staging / name, Path(run_dir) / name, trash=staging / f"replaced-{name}")
    rotate(run_dir, limit, best)
    try:
        staging.rmdir()
    except OSError:  # another save's files, or a leftover of a killed one
        pass


def to_delete(ckpts: list[Path], limit: int | None, best: Path | None) -> list[Path]:
    """The checkpoints (oldest first) that `--save_total_limit limit` removes: all but the
    newest `limit`, sparing the best.

    Examples:
        >>> ckpts = [Path(f"run/checkpoint-{s}") for s in (10, 20, 30, 40)]
        >>> [p.name for p in to_delete(ckpts, 2, None)]
        ['checkpoint-10', 'checkpoint-20']
        >>> [p.name for p in to_delete(ckpts, 2, Path("run/checkpoint-10"))]
        ['checkpoint-20']
        >>> to_delete(ckpts, None, None)
        []
    """
    if not limit or limit <= 0:
        return []
    return [p for p in ckpts[:-limit] if p != best]


def rotate(run_dir: Path, limit: int | None, best: str | None) -> None:
    """Delete what `to_delete` names; each folder is renamed into the staging area first,
    so a kill mid-delete leaves no half checkpoint under a `checkpoint-N` name."""
    for old in to_delete(checkpoints(run_dir), limit, Path(best) if best else None):
        doomed = staging_dir(run_dir) / f"deleting-{old.name}"
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

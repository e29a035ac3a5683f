"""Durable file-system steps shared by every stage that publishes a folder: the encoder's
corpus, the trainer's checkpoints, `llt export`'s model.

Each publishes the same way: write everything under a staging name, then rename it into
place in one step, so a reader never finds a half-written folder under a final name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(staged: Path, final: Path, trash: Path) -> None:
    """Move the complete folder `staged` to `final`, replacing any folder there.

    The old folder is first renamed to `trash` (beside the staging area) and deleted only
    after the new one is in place: at every moment `final` is either the old complete
    folder, missing, or the new complete one, never a mixture.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "new").mkdir(); (root / "old").mkdir(); _ = (root / "old" / "x").write_text("1")
        >>> replace_dir(root / "new", root / "old", root / ".trash")
        >>> sorted(p.name for p in root.iterdir()), list((root / "old").iterdir())
        (['old'], [])
    """
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(staged, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staged, final)
    fsync_dir(final.parent)

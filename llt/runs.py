"""Run folders on disk: their complete `checkpoint-N` folders (no torch or transformers
import, so `llt plot` and reports stay light)."""

from __future__ import annotations

from pathlib import Path

PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder (holding `trainer_state.json`), oldest first;
    staging folders and other names are left out."""
    return sorted((p for p in Path(run_dir).glob(f"{PREFIX}-*")
                   if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()),
                  key=lambda p: int(p.name.split("-")[-1]))

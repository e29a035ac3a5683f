"""What a run changes outside its arguments, done once when the run is set up (not while
the arguments are built, so building them, in a test or a notebook, changes nothing else):
logging, HF's progress bars in a log file, and the run folder's timestamp, agreed by every
rank."""

from __future__ import annotations

import logging
import time
from pathlib import Path


def prepare_run(args) -> None:
    """Logging at the rank's level; HF's loading/saving bars off where llt prints progress
    lines (they would fill a log the way tqdm's step bar does); the run folder named."""
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(message)s")
    if getattr(args, "progress_lines", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if getattr(args, "stamp_run_folder", False):
        args.output_dir = str(Path(args.output_path) / f"{args.save_name}-{run_stamp(args)}")
        args.stamp_run_folder = False  # named once, however often the run is prepared


def run_stamp(args) -> str:
    """The run folder's timestamp, taken on rank 0 and shared, so every rank writes to the
    same folder even when they start on different seconds (a collective under a launcher)."""
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if args.world_size > 1:
        from accelerate.utils import broadcast_object_list
        broadcast_object_list(stamp, from_process=0)
    return stamp[0]

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
    if args.resume_from_checkpoint == "auto":
        resume_auto(args)
    if getattr(args, "stamp_run_folder", False):
        args.output_dir = str(Path(args.output_path) / f"{args.save_name}-{run_stamp(args)}")
        args.stamp_run_folder = False  # named once, however often the run is prepared


def resume_auto(args) -> None:
    """`--load_ckpt_path auto`, what a requeued job passes: resume from the newest
    resumable checkpoint of this run (the `--output_dir` given, or the newest
    `<output_path>/<save_name>-*` folder holding one) and go on writing in that folder;
    start fresh when there is none. Every rank decides alone; the pre-flight check
    (`llt.train.preflight`) stops the run if nodes decided differently."""
    from llt.runs.folder import newest_resumable

    explicit = None if getattr(args, "stamp_run_folder", False) else args.output_dir
    found = newest_resumable(args.output_path, args.save_name, explicit)
    log = logging.getLogger("llt")
    if found is None:
        args.resume_from_checkpoint = None
        if args.should_log:
            where = explicit or f"{args.output_path} (runs named {args.save_name}-*)"
            log.warning("llt: --load_ckpt_path auto: no resumable checkpoint of this run in %s; starting fresh",
                        where)
        return
    args.resume_from_checkpoint = str(found)
    args.output_dir, args.stamp_run_folder = str(found.parent), False
    if args.should_log:
        log.warning("llt: --load_ckpt_path auto: resuming from %s", found)


def run_stamp(args) -> str:
    """The run folder's timestamp, taken on rank 0 and shared, so every rank writes to the
    same folder even when they start on different seconds (a collective under a launcher)."""
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if args.world_size > 1:
        from accelerate.utils import broadcast_object_list
        broadcast_object_list(stamp, from_process=0)
    return stamp[0]

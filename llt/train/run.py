"""A training command from argv to its exit code, for every method: build the trainer,
train, say how it ended, and leave the process group whatever happened.

    llt train ...   /  recipes/sft.py ...   ->  run("train", argv)
    llt dpo ...     /  recipes/dpo.py ...   ->  run("dpo", argv)
"""

from __future__ import annotations

import sys

from llt.errors import LltError


def run(method: str, argv: list[str] | None = None) -> int:
    """Exit code 0 when training ended (done, preempted with a checkpoint, or already
    finished), 2 on bad input (one line on stderr, no traceback)."""
    from llt.train.build import build_trainer
    from llt.train.methods import get_method

    impl = get_method(method)
    interrupted = False
    crashed = True  # until proven otherwise: a rank that raised must not wait for the others
    try:
        try:
            trainer = build_trainer(argv, impl)
        except LltError as e:
            crashed = False
            print(f"{impl.command}: error: {e}", file=sys.stderr)
            return 2
        try:
            rc = _train(trainer, trainer.args, impl.command)
        except LltError as e:
            # Bad input met during training (a GRPO reward function that raises): one line. The
            # rank does not wait for the others, which may be inside a collective it left.
            trainer.preemption.on_train_end(trainer.args, trainer.state, trainer.control)  # signals as before
            print(f"{impl.command}: error: {e}", file=sys.stderr, flush=True)
            return 2
        crashed = False
        return rc
    except KeyboardInterrupt:
        # Ctrl-C before training began, or a second one during it (the first asks for a
        # checkpoint: llt.train.callbacks.PreemptionCallback). Other ranks get it too (it
        # goes to the process group), so nobody waits at the barrier below.
        interrupted = True
        print(f"{impl.command}: interrupted; exited without a new checkpoint (the newest complete "
              "one, if any, is kept)", file=sys.stderr, flush=True)
        return 130
    finally:
        from llt.train.watchdog import stop

        stop(left=not crashed)  # a normal exit is announced; a crashed rank's silence ends the others
        if not interrupted:
            _leave_process_group(wait=not crashed)


def _leave_process_group(wait: bool = True) -> None:
    """Every rank waits for the others, then the process group is torn down (on the error
    path too: `LltError`s are raised on every rank alike). A rank that exits while another
    is still writing reports would otherwise take gloo's threads down mid-use ("terminate
    called without an active exception", seen once in CI). A rank that crashed does not
    wait: the others may be inside a collective it will never join, and its traceback
    would stay unprinted behind the barrier while the job hangs."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _train(trainer, args, command: str) -> int:
    """Train, then say how it ended; 0 unless the DeepSpeed JSON contradicts the flags."""
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except ValueError as e:
        # Values HF can only check once the schedule is known (warmup, total steps).
        if "DeepSpeed config values that mismatch" not in str(e):
            raise
        print(f"{command}: error: --deepspeed_config_path {args.deepspeed}: {e}", file=sys.stderr)
        return 2
    if trainer.already_finished is not None:
        print(f"{command}: {args.resume_from_checkpoint} is at step {trainer.already_finished}, the "
              "last step of this run; nothing to train (raise --max_steps or --max_epochs to go on)")
        return 0
    preempt = trainer.preemption
    if preempt.failure:
        saved = (f"; resumable checkpoint saved after step {preempt.stopped_at}; continue with "
                 f"--load_ckpt_path {args.output_dir}") if preempt.stopped_at is not None and args.should_save else ""
        print(f"{command}: error: {preempt.failure}{saved}", file=sys.stderr)
        return 1
    if preempt.stopped_at is not None:
        if args.should_save:
            import signal
            name = signal.Signals(preempt.received).name if preempt.received else "a signal on another rank"
            print(f"{command}: stopped by {name} after step {preempt.stopped_at}; "
                  f"resumable checkpoint saved; continue with --load_ckpt_path {args.output_dir}")
        return 0
    if args.should_save:
        print(f"{command}: done; run folder {args.output_dir}")
    return 0

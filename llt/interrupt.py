"""Ctrl-C and SIGTERM for the commands that are not training: end promptly, one line.

Python turns SIGINT into `KeyboardInterrupt`; SIGTERM kills the process without running
any cleanup. `exit_on_signals` makes SIGTERM raise too (`Interrupted`, a
`KeyboardInterrupt`), so both take the same way out: the command's `finally`/`except
BaseException` cleanup (an encode's workers killed, its partial folder removed), then
`llt CMD: interrupted...` and exit 128 + the signal's number (130, 143), as a shell
reports a process the signal ended.

`deferred()` holds the signals over a step that must not be cut in two (renaming the
shards into place and writing the manifest): a signal received there is raised when the
step is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop; `note` says what state it left, when the
    command knows better than its generic line."""

    def __init__(self, signum: int = signal.SIGINT, note: str | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.note = note


RECEIVED: list[int] = []  # signals raised as Interrupted in this process


def _raise(signum, frame):
    RECEIVED.append(signum)
    raise Interrupted(signum)


def received() -> Interrupted | None:
    """The interrupt this process got, if any: an error after it is its consequence (a C
    extension interrupted mid-import raises its own ImportError, losing the interrupt)."""
    return Interrupted(RECEIVED[0]) if RECEIVED else None


@contextlib.contextmanager
def exit_on_signals():
    """Within the block, SIGINT and SIGTERM raise `Interrupted` in the main thread (unless
    ignored, as for a background job started from a non-interactive shell: that stays as
    the user set it); the handlers are put back after it (`llt.cli.main` may be called
    from a program of the user's, whose handlers are its own)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code(e: KeyboardInterrupt) -> int:
    """Examples:
        >>> exit_code(Interrupted(signal.SIGTERM)), exit_code(KeyboardInterrupt())
        (143, 130)
    """
    return 128 + getattr(e, "signum", signal.SIGINT)


@contextlib.contextmanager
def deferred(note: str | None = None):
    """Hold SIGINT/SIGTERM over the block; one received meanwhile is raised after it, as
    `Interrupted(signum, note)` (`note`: what the finished block left, for the user)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = {}
    for sig in SIGNALS:
        previous[sig] = signal.getsignal(sig)
        if previous[sig] is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if got:
        raise Interrupted(got[0], note)

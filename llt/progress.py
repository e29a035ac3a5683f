"""Progress for a terminal and for logs alike.

On a terminal, a tqdm bar. Written to a file or a pipe (a job log, `| tee`, a container's
stdout), a bar's carriage-return updates become thousands of lines; there llt prints one
plain line every `LLT_PROGRESS_SECONDS` seconds (default 30) and one at the end, the way
log-reading tools expect.
"""

from __future__ import annotations

import os
import sys
import time


def interval() -> float:
    return float(os.environ.get("LLT_PROGRESS_SECONDS", "30"))


def is_tty(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class LineProgress:
    """tqdm's `update`/`close` as a line every `every` seconds.

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> p = LineProgress("encode wiki", "tok", every=0, stream=out)
        >>> p.update(1500); p.close()
        >>> out.getvalue().splitlines()[-1].startswith("encode wiki: 1.50k tok (")
        True
    """

    def __init__(self, desc: str, unit: str, every: float | None = None, stream=None):
        self.desc, self.unit, self.stream = desc, unit, stream or sys.stderr
        self.every = interval() if every is None else every
        self.n, self.start = 0, time.monotonic()
        self.last = self.start

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if n and now - self.last >= self.every:
            self.last = now
            self._line("")

    def _line(self, end: str) -> None:
        from tqdm import tqdm

        secs = time.monotonic() - self.start
        rate = tqdm.format_sizeof(self.n / secs) if secs > 0 else "-"
        print(f"{self.desc}: {tqdm.format_sizeof(self.n)} {self.unit} ({rate} {self.unit}/s, {secs:.0f} s){end}",
              file=self.stream, flush=True)

    def close(self) -> None:
        self._line(", done")

    def stop(self) -> None:
        """The last line of a job that failed or was interrupted (not ", done")."""
        self._line(", stopped")


def progress(desc: str, unit: str, enabled: bool = True, **tqdm_kw):
    """A tqdm bar on a terminal, `LineProgress` elsewhere, nothing when not `enabled`."""
    from tqdm import tqdm

    if not enabled:
        return tqdm(disable=True)
    if is_tty():
        return tqdm(desc=desc, unit=unit, unit_scale=True, file=sys.stderr, **tqdm_kw)
    return LineProgress(desc, unit)

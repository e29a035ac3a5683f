"""The errors caused by user input (flags, files, records, checkpoints).

The CLI prints an `LltError`'s message alone and exits non-zero: each message names the
flag, file or record at fault, so a traceback would only hide it. Stages that need a
narrower kind for callers to catch use the subclasses here (or one of their own next to
the code that raises it, such as `ShardFormatError` or `RecordError`).
"""


class LltError(Exception):
    """Bad user input; the message is complete and names what to fix."""


class ConfigError(LltError, ValueError):
    """A flag or recipe value that cannot work; the message names the flag."""


class DataError(LltError, ValueError):
    """Training data that cannot be used; the message names the path."""


class CheckpointError(LltError, ValueError):
    """A checkpoint or run folder that cannot be used; the message names the path and what
    is missing."""

"""The one base class for errors caused by user input (flags, files, records).

The CLI prints an `LltError`'s message alone and exits non-zero: each message names the
flag, file or record at fault, so a traceback would only hide it.
"""


class LltError(Exception):
    """Bad user input; the message is complete and names what to fix."""

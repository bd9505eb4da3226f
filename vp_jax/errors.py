"""User-facing errors: one line that names the file or field and what was expected."""

from __future__ import annotations

import functools
import sys


class VPError(Exception):
    """Base of every error caused by the user's input (data, config, checkpoint, arguments).

    Command-line entry points print ``error: <message>`` on one line and exit with status 2
    instead of showing a traceback.
    """


class DataError(VPError):
    """A data file or folder is missing, unreadable or has the wrong shape/content."""


class ConfigError(VPError):
    """A config field is unknown, of the wrong type or contradicts another field."""


class CheckpointError(VPError):
    """A checkpoint is missing, damaged or was written by a different model."""


def cli_main(fn):
    """Decorate a ``main()``: turn a :class:`VPError` into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VPError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper

"""The one exception type the command line turns into a clean message and a non-zero exit code."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem the user can fix: the message names the file, column or flag at fault.

    ``covserve-train`` prints ``covserve-train: error: <message>`` and exits with status 2, no traceback.
    """

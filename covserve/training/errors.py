"""The exceptions the command line turns into one clean line and an exit code (importable without torch)."""

from __future__ import annotations

__all__ = ["ExportError", "TrainingDivergedError", "TrainingInterruptedError", "UsageError"]


class UsageError(Exception):
    """A problem the user can fix: the message names the file, column or flag at fault.

    ``covserve-train`` prints ``covserve-train: error: <message>`` and exits with status 2, no traceback.
    """


class TrainingDivergedError(Exception):
    """A non-finite loss; the message names the epoch, batch and method. The last good checkpoint stays."""


class TrainingInterruptedError(Exception):
    """Ctrl-C during training; the checkpoint of the last completed epoch is resumable."""


class ExportError(Exception):
    """The exported graph failed verification; nothing was published."""

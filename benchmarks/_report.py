"""Writing a benchmark's Markdown report atomically, like every file that matters.

Long runs rewrite their report after each step, so an interrupted or failed write must leave the previous
file, never a truncated one.
"""

from __future__ import annotations

from pathlib import Path

from covserve.training.atomic import write_atomically

__all__ = ["write_report"]


def write_report(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its directory."""
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))

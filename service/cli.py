"""``covserve-serve``: the online entry point (the HTTP server arrives with the inference service)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from service import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="covserve-serve",
        description="Serve the models of a covserve model repository over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"covserve {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0

"""``covserve-train``: the offline entry point (subcommands arrive with the training pipeline)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from training import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="covserve-train",
        description="Train mean and covariance networks and export them to the model repository.",
    )
    parser.add_argument("--version", action="version", version=f"covserve {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0

"""Argument types the benchmarks share: a bad count is an argparse error naming the flag, never a default.

``args.trials or FULL_TRIALS`` would silently turn ``--trials 0`` into the default run, and a negative count
would fail deep inside training with a traceback; these types reject both at parse time (exit code 2).
"""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_float", "positive_int", "positive_ints"]


def _integer_at_least(text: str, smallest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < smallest:
        raise argparse.ArgumentTypeError(f"{value} must be at least {smallest}")
    return value


def positive_int(text: str) -> int:
    """An integer ≥ 1."""
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer ≥ 0 (a seed, a trial index)."""
    return _integer_at_least(text, 0)


def positive_ints(text: str) -> tuple[int, ...]:
    """A comma-separated list of integers ≥ 1, e.g. ``"4,8,12"``."""
    return tuple(positive_int(part.strip()) for part in text.split(","))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number above 0")
    return value

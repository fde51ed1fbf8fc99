"""Data sets that push training into numerical corners, for divergence tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from covserve.training.data import DataConfig, Split, Table, load_split

TargetMap = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def _synthetic_split_with_targets(samples: int, targets: TargetMap) -> Split:
    """The synthetic split of ``samples`` rows with each part's targets ``(N, D)`` replaced by
    ``targets(old)``."""
    split = load_split(DataConfig(samples=samples))

    def replaced(table: Table) -> Table:
        return dataclasses.replace(table, targets=targets(table.targets))

    return dataclasses.replace(
        split, train=replaced(split.train), validation=replaced(split.validation), test=replaced(split.test)
    )


def constant_target_split(samples: int = 200) -> Split:
    """The synthetic split with every target set to 1: every pseudo-label and the identity start's
    covariance are then multiples of ``I``, where the exact W2 loss's eigendecomposition has a NaN gradient
    and a finite value."""
    return _synthetic_split_with_targets(samples, np.ones_like)


def _last_is_minus_sum_of_others(targets: NDArray[np.float64]) -> NDArray[np.float64]:
    dependent = targets.copy()
    dependent[:, -1] = -targets[:, :-1].sum(axis=1)
    return dependent


def linearly_dependent_target_split(samples: int = 200) -> Split:
    """The synthetic split with its last target replaced by minus the sum of the others (as electrical's
    ``p1 = −(p2 + p3 + p4)``): the targets' covariance is singular."""
    return _synthetic_split_with_targets(samples, _last_is_minus_sum_of_others)

"""Data sets that push training into numerical corners, for divergence tests."""

from __future__ import annotations

import dataclasses

import numpy as np

from training.data import DataConfig, Split, Table, load_split


def constant_target_split(samples: int = 200) -> Split:
    """The synthetic split with every target set to 1: every pseudo-label and the identity start's
    covariance are then multiples of ``I``, where the exact W2 loss's eigendecomposition has a NaN gradient
    and a finite value."""
    split = load_split(DataConfig(samples=samples))

    def constant(table: Table) -> Table:
        return dataclasses.replace(table, targets=np.ones_like(table.targets))

    return dataclasses.replace(
        split, train=constant(split.train), validation=constant(split.validation), test=constant(split.test)
    )


def linearly_dependent_target_split(samples: int = 200) -> Split:
    """The synthetic split with its last target replaced by minus the sum of the others (as electrical's
    ``p1 = −(p2 + p3 + p4)``): the targets' covariance is singular."""
    split = load_split(DataConfig(samples=samples))

    def dependent(table: Table) -> Table:
        targets = table.targets.copy()
        targets[:, -1] = -targets[:, :-1].sum(axis=1)
        return dataclasses.replace(table, targets=targets)

    return dataclasses.replace(
        split,
        train=dependent(split.train),
        validation=dependent(split.validation),
        test=dependent(split.test),
    )

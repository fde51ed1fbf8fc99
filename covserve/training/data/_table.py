"""What every loader returns: a :class:`Table` of aligned arrays, and a :class:`Split` into three tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["MIN_PART_ROWS", "MIN_ROWS", "Split", "Table"]

MIN_ROWS: Final = 10
"""Fewest rows a data set may keep after cleaning: below this no split is meaningful."""

MIN_PART_ROWS: Final = 2
"""Fewest rows in a non-empty part of a split (a sample covariance needs two rows)."""

_MATRIX_NDIM: Final = 2
_COVARIANCE_NDIM: Final = 3


@dataclass(frozen=True, eq=False)
class Table:
    """A regression data set: row ``i`` of every array belongs to the same sample.

    Attributes
    ----------
    inputs : NDArray[np.float64], shape (N, M)
        Inputs ``x_i``, finite.
    targets : NDArray[np.float64], shape (N, D)
        Targets ``y_i``, finite; ``D = 1`` is allowed.
    input_names : tuple[str, ...], length M
        Column name of each input.
    target_names : tuple[str, ...], length D
        Column name of each target.
    true_mean : NDArray[np.float64] or None, shape (N, D)
        True conditional mean ``mu(x_i)`` (built-in generated data sets only).
    true_covariance : NDArray[np.float64] or None, shape (N, D, D)
        True conditional covariance ``Sigma(x_i)`` (built-in generated data sets only).

    Raises
    ------
    ValueError
        If the shapes or name counts disagree (a programming error, not a user one).
    """

    inputs: NDArray[np.float64]
    targets: NDArray[np.float64]
    input_names: tuple[str, ...]
    target_names: tuple[str, ...]
    true_mean: NDArray[np.float64] | None = None
    true_covariance: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        """Check that every array has ``N`` rows and the shapes and names agree."""
        if self.inputs.ndim != _MATRIX_NDIM or self.targets.ndim != _MATRIX_NDIM:
            raise ValueError(
                f"inputs and targets must be 2-D, got {self.inputs.shape} and {self.targets.shape}"
            )
        rows, dim = self.targets.shape
        if self.inputs.shape[0] != rows:
            raise ValueError(f"inputs have {self.inputs.shape[0]} rows but targets have {rows}")
        if len(self.input_names) != self.inputs.shape[1] or len(self.target_names) != dim:
            raise ValueError(
                f"{len(self.input_names)} input and {len(self.target_names)} target names for arrays of "
                f"shapes {self.inputs.shape} and {self.targets.shape}"
            )
        if self.true_mean is not None and self.true_mean.shape != (rows, dim):
            raise ValueError(f"true_mean must have shape {(rows, dim)}, got {self.true_mean.shape}")
        if self.true_covariance is not None and self.true_covariance.shape != (rows, dim, dim):
            raise ValueError(
                f"true_covariance must have shape {(rows, dim, dim)}, got {self.true_covariance.shape}"
            )

    def __len__(self) -> int:
        """Number of rows ``N``."""
        return int(self.targets.shape[0])

    def rows(self, index: NDArray[np.int64]) -> Table:
        """The rows ``index`` (in that order), with the truth arrays kept aligned.

        Parameters
        ----------
        index : NDArray[np.int64], shape (K,)
            Row numbers in ``[0, N)``; repeats are allowed.

        Returns
        -------
        Table
            ``K`` rows, the same column names.
        """
        return Table(
            inputs=self.inputs[index],
            targets=self.targets[index],
            input_names=self.input_names,
            target_names=self.target_names,
            true_mean=None if self.true_mean is None else self.true_mean[index],
            true_covariance=None if self.true_covariance is None else self.true_covariance[index],
        )


@dataclass(frozen=True, eq=False)
class Split:
    """Training, validation and test parts of one data set, and how they were made.

    Attributes
    ----------
    train, validation, test : Table
        The three parts, with the same columns. Under the TIC-TAC protocol all three are the whole table;
        a part whose fraction is zero is empty.
    description : str
        Human-readable, one fact a line: the source, the rows dropped and why, the protocol and the sizes.
    """

    train: Table
    validation: Table
    test: Table
    description: str

    def sizes(self) -> dict[str, int]:
        """Rows per part: ``{"train": ..., "validation": ..., "test": ...}``."""
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}

"""Cut a :class:`Table` into training, validation and test parts, by one of the two protocols."""

from __future__ import annotations

import dataclasses
import math
from typing import Final

import numpy as np

from covserve.training.data._columns import DEFAULT_INPUT_FRACTION, default_input_count
from covserve.training.data._config import DataConfig, Protocol
from covserve.training.data._table import MIN_PART_ROWS, Split, Table
from covserve.training.errors import UsageError
from covserve.training.numerics import (
    CONSTANT_COLUMN_RTOL,
    MAX_ABS_DATA_VALUE,
    MAX_TARGET_STANDARD_DEVIATION,
    MIN_STANDARD_DEVIATION,
    TARGET_RANK_TOLERANCE,
    constant_columns,
)

__all__ = ["TICTAC_SCALE", "check_column_scales", "make_split"]

TICTAC_SCALE: Final = 10.0
"""TIC-TAC standardises every column with ``10 * StandardScaler()``: mean 0, standard deviation 10."""


def make_split(table: Table, config: DataConfig) -> Split:
    """Split ``table`` by ``config.protocol``.

    * ``holdout``: the rows are shuffled with ``numpy.random.default_rng(config.seed)``; the first
      ``N - n_val - n_test`` are the training part, the next ``n_val = round(validation_fraction N)`` the
      validation part and the last ``n_test = round(test_fraction N)`` the test part. Nothing is scaled.
    * ``tictac``: the TIC-TAC UCI protocol. Every column (inputs and targets together, C in all) is
      standardised to mean 0 and standard deviation 10 (population std; a constant column becomes 0, as
      with ``StandardScaler``), the columns are permuted with ``default_rng(config.seed)``, the first
      ``int(0.25 C)`` (at least one) are the inputs and the rest the targets, and every part is the whole
      table: the paper evaluates on its training rows. The fractions are not used, and truth arrays are
      dropped because the permuted targets no longer match them.

    Parameters
    ----------
    table : Table
        N rows, inputs (N, M), targets (N, D).
    config : DataConfig
        ``protocol``, ``seed``, ``validation_fraction``, ``test_fraction``.

    Returns
    -------
    Split
        Its ``description`` states the protocol and the part sizes, and names the training targets that are
        linearly dependent, if any (:func:`_dependent_targets_note`).

    Raises
    ------
    UsageError
        If a holdout part with a positive fraction, or the training part, would get fewer than
        :data:`~training.data._table.MIN_PART_ROWS` rows, or a column's scale cannot be trained and
        exported in float32 (:func:`check_column_scales`).
    """
    check_column_scales(table, config.protocol)
    if config.protocol is Protocol.TICTAC:
        split = _tictac(table, config.seed)
    else:
        split = _holdout(table, config.validation_fraction, config.test_fraction, config.seed)
    note = _dependent_targets_note(split.train)
    if note is None:
        return split
    return dataclasses.replace(split, description=f"{split.description}\n{note}")


def check_column_scales(table: Table, protocol: Protocol) -> None:
    """Refuse, naming the column, values beyond :data:`MAX_ABS_DATA_VALUE` and (``holdout``, whose targets
    stay in raw units) a target spread beyond :data:`MAX_TARGET_STANDARD_DEVIATION` or a varying column
    spread below :data:`MIN_STANDARD_DEVIATION`; each message says how to rescale."""
    for kind, names, values in (
        ("input", table.input_names, table.inputs),
        ("target", table.target_names, table.targets),
    ):
        largest = np.abs(values).max(axis=0, initial=0.0)
        for column in np.flatnonzero(largest > MAX_ABS_DATA_VALUE):
            raise UsageError(
                f"{kind} column {names[column]!r} holds values up to {largest[column]:.3g}, beyond "
                f"{MAX_ABS_DATA_VALUE:g}: the model computes in float32; rescale the column (e.g. divide it "
                "by a power of ten, or take its logarithm)"
            )
        if protocol is Protocol.TICTAC:
            continue
        spread = values.std(axis=0)
        for column in np.flatnonzero((spread < MIN_STANDARD_DEVIATION) & ~constant_columns(values)):
            raise UsageError(
                f"{kind} column {names[column]!r} varies by a standard deviation of {spread[column]:.3g}, "
                f"below {MIN_STANDARD_DEVIATION:g}: rescale it (e.g. multiply it by 1e6)"
            )
        if kind == "target":
            for column in np.flatnonzero(spread > MAX_TARGET_STANDARD_DEVIATION):
                raise UsageError(
                    f"target column {names[column]!r} has a standard deviation of {spread[column]:.3g}, "
                    f"beyond {MAX_TARGET_STANDARD_DEVIATION:g}: its covariance would overflow float32; "
                    "rescale it (e.g. divide it by a power of ten)"
                )


def _dependent_targets_note(part: Table) -> str | None:
    """A line naming the targets of ``part`` that are linearly dependent, or ``None`` when there are none.

    Their covariance is singular, so a full covariance fitted by likelihood can shrink along the dependency
    until only the covariance ridge stops it. Constant targets are left out (they are plainly degenerate).
    The rank is that of the standardised non-constant target columns ``(N, D')`` at
    :data:`~training.numerics.TARGET_RANK_TOLERANCE`."""
    spread = part.targets.std(axis=0)
    varying = np.flatnonzero(spread > 0.0)
    if len(varying) < 2:
        return None
    columns = part.targets[:, varying]
    standardised = (columns - columns.mean(axis=0)) / spread[varying]
    _, singular, right = np.linalg.svd(standardised, full_matrices=False)
    null_space = right[singular < TARGET_RANK_TOLERANCE * singular[0]]
    if not len(null_space):
        return None
    involved = np.flatnonzero(np.abs(null_space).max(axis=0) > TARGET_RANK_TOLERANCE)
    names = ", ".join(part.target_names[varying[column]] for column in involved)
    rank = len(varying) - len(null_space)
    return (
        f"warning: the training targets {names} are linearly dependent (rank {rank} of {len(varying)}): "
        "their covariance is singular, a likelihood fit can shrink the variance along the dependency down "
        "to the covariance ridge, and NLL figures then reflect the ridge as much as the data; leaving one of "
        "them out (--targets) removes it"
    )


def _part_rows(fraction: float, rows: int) -> int:
    """``fraction * rows`` rounded half up."""
    return math.floor(fraction * rows + 0.5)


def _holdout(table: Table, validation_fraction: float, test_fraction: float, seed: int) -> Split:
    """Shuffle and cut; see :func:`make_split`."""
    rows = len(table)
    validation_rows = _part_rows(validation_fraction, rows)
    test_rows = _part_rows(test_fraction, rows)
    train_rows = rows - validation_rows - test_rows
    parts = (
        (
            "training",
            train_rows,
            1.0 - validation_fraction - test_fraction,
            "the other two fractions smaller",
        ),
        ("validation", validation_rows, validation_fraction, "--validation-fraction larger (or 0)"),
        ("test", test_rows, test_fraction, "--test-fraction larger (or 0)"),
    )
    for part, size, fraction, advice in parts:
        if fraction > 0 and size < MIN_PART_ROWS:
            raise UsageError(
                f"the holdout split of {rows} rows leaves {size} {part} rows; every part needs at least "
                f"{MIN_PART_ROWS}: use more data or make {advice}"
            )
    order = np.random.default_rng(seed).permutation(rows)
    train = order[:train_rows]
    validation = order[train_rows : train_rows + validation_rows]
    test = order[train_rows + validation_rows :]
    sizes = ", ".join(
        f"{part} {size} ({size / rows:.0%})"
        for part, size in (("train", train_rows), ("validation", validation_rows), ("test", test_rows))
    )
    description = f"protocol holdout: rows shuffled with --seed {seed}; {sizes}"
    return Split(
        train=table.rows(train),
        validation=table.rows(validation),
        test=table.rows(test),
        description=description,
    )


def _tictac(table: Table, seed: int) -> Split:
    """Scale, permute the columns, and use all rows everywhere; see :func:`make_split`."""
    matrix = np.hstack([table.inputs, table.targets])
    names = table.input_names + table.target_names
    std = matrix.std(axis=0)
    constant = constant_columns(matrix)
    scaled = TICTAC_SCALE * (matrix - matrix.mean(axis=0)) / np.where(constant, 1.0, std)
    permutation = np.random.default_rng(seed).permutation(len(names))
    input_count = default_input_count(len(names))
    inputs, targets = permutation[:input_count], permutation[input_count:]
    permuted = Table(
        inputs=np.ascontiguousarray(scaled[:, inputs]),
        targets=np.ascontiguousarray(scaled[:, targets]),
        input_names=tuple(names[column] for column in inputs),
        target_names=tuple(names[column] for column in targets),
    )
    lines = [
        f"protocol tictac (TIC-TAC UCI): all {len(names)} columns standardised to mean 0 and std "
        f"{TICTAC_SCALE:g}, then permuted with --seed {seed}; the first {DEFAULT_INPUT_FRACTION:.0%} "
        f"({input_count}) are inputs: {', '.join(permuted.input_names)}; the other {len(targets)} are "
        f"targets: {', '.join(permuted.target_names)}",
    ]
    if constant.any():
        flat = [names[column] for column in np.flatnonzero(constant)]
        lines.append(
            f"constant columns (std at most {CONSTANT_COLUMN_RTOL:g} of their largest value) became 0: "
            f"{', '.join(flat)}"
        )
    if table.true_mean is not None:
        lines.append("the true mean and covariance are dropped: they do not describe the permuted columns")
    lines.append(
        f"train, validation and test are all {len(table)} rows (the paper evaluates on its training rows; "
        "--validation-fraction and --test-fraction are not used)"
    )
    return Split(train=permuted, validation=permuted, test=permuted, description="\n".join(lines))

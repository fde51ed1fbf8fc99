"""Choose input and target columns of a :class:`RawTable`, convert them to numbers and drop missing rows.

A column specification is a column name or an inclusive range ``"first:last"`` of names in file order. A
name that itself contains ``:`` is always taken as a name first.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from covserve.training.data._files import RawColumn, RawTable
from covserve.training.data._table import MIN_ROWS, Table
from covserve.training.errors import UsageError

__all__ = [
    "DEFAULT_INPUT_FRACTION",
    "MISSING_TOKENS",
    "RANGE_SEPARATOR",
    "ColumnRequest",
    "build_table",
    "choose_columns",
    "default_input_count",
    "resolve_columns",
]

RANGE_SEPARATOR: Final = ":"

MISSING_TOKENS: Final = frozenset({"", "na", "n/a", "nan", "null", "none"})
"""Text values (compared in lower case) that mean "missing"; any other text must parse as a number."""

DEFAULT_INPUT_FRACTION: Final = 0.25
"""Share of the columns that are inputs when a UCI data set is loaded without ``--targets`` and in the
TIC-TAC protocol: the first ``int(0.25 C)`` columns (at least one), the rest are targets."""

_SHOWN_VALUES: Final = 3
"""Non-numeric example values quoted in an error message."""

_SHOWN_COLUMNS: Final = 3
"""Columns named, with their missing-value counts, when rows are dropped."""


def default_input_count(columns: int) -> int:
    """``max(1, int(0.25 * columns))``: how many of ``columns`` columns are inputs by default."""
    return max(1, int(DEFAULT_INPUT_FRACTION * columns))


@dataclass(frozen=True)
class ColumnRequest:
    """The user's column choice, as in :class:`~training.data.DataConfig`.

    Attributes
    ----------
    inputs : list[str] or None
        ``--inputs`` specifications; ``None`` means every column that is neither a target nor excluded.
    targets : list[str] or None
        ``--targets`` specifications; ``None`` is an error unless ``default_targets`` is set.
    exclude : list[str]
        ``--exclude`` specifications.
    default_targets : bool
        Without ``--targets``: use every column not in ``--inputs`` or, without ``--inputs`` either, the
        last columns after the first :func:`default_input_count` (the UCI default).
    """

    inputs: list[str] | None
    targets: list[str] | None
    exclude: list[str]
    default_targets: bool = False


def resolve_columns(specs: Sequence[str], columns: Sequence[str], option: str, source: str) -> list[str]:
    """Expand names and ``"first:last"`` ranges into column names, in the order given.

    Parameters
    ----------
    specs : Sequence[str]
        Names or inclusive ranges.
    columns : Sequence[str]
        The available columns, in file order.
    option : str
        The flag the specifications came from, for messages (``"--inputs"``).
    source : str
        The file, for messages.

    Returns
    -------
    list[str]
        Column names, each once.

    Raises
    ------
    UsageError
        If a specification is neither a column nor a range of columns (the message lists the available
        columns), a range runs backwards, or a column is named twice.
    """
    order = {column: position for position, column in enumerate(columns)}
    names: list[str] = []
    for spec in specs:
        if spec in order:
            names.append(spec)
            continue
        first, last = _split_range(spec, order, option, source, columns)
        if order[first] > order[last]:
            raise UsageError(
                f"{option} range {spec!r} runs backwards: {first!r} comes after {last!r} in {source}"
            )
        names.extend(columns[order[first] : order[last] + 1])
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{option} names column {name!r} of {source} twice")
        seen.add(name)
    return names


def _split_range(
    spec: str, order: dict[str, int], option: str, source: str, columns: Sequence[str]
) -> tuple[str, str]:
    """The two ends of a range ``"first:last"``, trying every ``:`` (names may contain one)."""
    ends = [
        (spec[:cut].strip(), spec[cut + 1 :].strip())
        for cut, char in enumerate(spec)
        if char == RANGE_SEPARATOR
    ]
    matches = [(first, last) for first, last in ends if first in order and last in order]
    if not matches:
        available = ", ".join(repr(column) for column in columns)
        raise UsageError(
            f"{option}: {spec!r} is not a column of {source} nor a range 'first:last' of its columns; "
            f"available columns: {available}"
        )
    if len(matches) > 1:
        readings = " or ".join(f"{first!r} to {last!r}" for first, last in matches)
        raise UsageError(f"{option}: the range {spec!r} of {source} is ambiguous: {readings}")
    return matches[0]


def choose_columns(
    request: ColumnRequest, columns: Sequence[str], source: str
) -> tuple[list[str], list[str]]:
    """Apply ``--exclude``, ``--targets`` and ``--inputs`` to the columns of a file.

    Returns
    -------
    (list[str], list[str])
        Input names and target names, each in the order requested (defaults in file order).

    Raises
    ------
    UsageError
        If no target is given for a file, a column is unknown or named twice, a column is both an input
        and a target, an excluded column is also selected, or no input column remains.
    """
    excluded = resolve_columns(request.exclude, columns, "--exclude", source)
    kept = [column for column in columns if column not in excluded]
    inputs = None if request.inputs is None else resolve_columns(request.inputs, columns, "--inputs", source)
    if request.targets is not None:
        targets = resolve_columns(request.targets, columns, "--targets", source)
    elif not request.default_targets:
        available = ", ".join(repr(column) for column in columns)
        raise UsageError(
            f"no target columns given for {source}: pass --targets with names or ranges 'first:last' of "
            f"its columns: {available}"
        )
    elif inputs is not None:
        targets = [column for column in kept if column not in inputs]
    else:
        targets = kept[default_input_count(len(kept)) :]
    if inputs is None:
        inputs = [column for column in kept if column not in targets]
    for option, chosen in (("--inputs", inputs), ("--targets", targets)):
        dropped = [column for column in chosen if column in excluded]
        if dropped:
            raise UsageError(f"{option} selects {dropped} of {source}, which --exclude drops")
    both = [column for column in inputs if column in targets]
    if both:
        raise UsageError(f"columns {both} of {source} are in both --inputs and --targets")
    if not targets:
        raise UsageError(f"no target columns remain in {source} after --inputs and --exclude")
    if not inputs:
        raise UsageError(f"no input columns remain in {source} after --targets and --exclude")
    return inputs, targets


def build_table(
    raw: RawTable, request: ColumnRequest, missing_values: Sequence[float]
) -> tuple[Table, list[str]]:
    """Select, convert and clean the columns of ``raw``.

    Parameters
    ----------
    raw : RawTable
        The file as read.
    request : ColumnRequest
        ``--inputs``, ``--targets``, ``--exclude``.
    missing_values : Sequence[float]
        Sentinels that mark a missing value (``--missing-value``, and e.g. ``-200`` for air quality).

    Returns
    -------
    (Table, list[str])
        The cleaned table (inputs (N, M), targets (N, D)) and description lines: the rows dropped and the
        columns chosen.

    Raises
    ------
    UsageError
        For a bad column choice (see :func:`choose_columns`), selected columns that are not numeric
        (named, with an ``--exclude`` suggestion), or fewer than :data:`MIN_ROWS` rows after cleaning.
    """
    inputs, targets = choose_columns(request, list(raw.columns), raw.source)
    selected = inputs + targets
    numbers: dict[str, NDArray[np.float64]] = {}
    bad: dict[str, _NonNumeric] = {}
    for column in selected:
        parsed = _parse_numbers(raw.columns[column])
        if isinstance(parsed, _NonNumeric):
            bad[column] = parsed
        else:
            numbers[column] = parsed
    if bad:
        raise UsageError(_non_numeric_message(raw.source, bad, targets))
    matrix = np.column_stack([numbers[column] for column in selected]).reshape(raw.rows, len(selected))
    missing = ~np.isfinite(matrix)
    for sentinel in missing_values:
        missing |= matrix == sentinel
    dropped = missing.any(axis=1)
    kept = matrix[~dropped]
    worst = _most_missing(selected, missing.sum(axis=0))
    lines = [_dropped_line(int(dropped.sum()), raw.rows, missing_values) + worst]
    if len(kept) < MIN_ROWS:
        raise UsageError(
            f"only {len(kept)} rows of {raw.source} remain after dropping {int(dropped.sum())} of "
            f"{raw.rows} with missing values{worst}; need at least {MIN_ROWS}"
        )
    lines.append(f"inputs ({len(inputs)}): {', '.join(inputs)}")
    lines.append(f"targets ({len(targets)}): {', '.join(targets)}")
    table = Table(
        inputs=np.ascontiguousarray(kept[:, : len(inputs)]),
        targets=np.ascontiguousarray(kept[:, len(inputs) :]),
        input_names=tuple(inputs),
        target_names=tuple(targets),
    )
    return table, lines


def _dropped_line(dropped: int, rows: int, missing_values: Sequence[float]) -> str:
    """Describe the rows dropped for missing values, naming every text and number that means missing."""
    tokens = sorted(token for token in MISSING_TOKENS if token)
    reasons = ", ".join(
        [
            "empty",
            *(repr(token) for token in tokens),
            "infinite",
            *(_number(value) for value in missing_values),
        ]
    )
    if not dropped:
        return f"no rows dropped: no selected value is missing ({reasons})"
    return f"dropped {dropped} of {rows} rows with a missing value ({reasons}) in a selected column"


def _most_missing(columns: Sequence[str], counts: NDArray[np.int64]) -> str:
    """``"; most missing: 'b' 7, 'a' 2"``: up to :data:`_SHOWN_COLUMNS` columns by missing count, or ""."""
    order = [int(position) for position in np.argsort(-counts, kind="stable") if counts[position] > 0]
    shown = ", ".join(f"{columns[position]!r} {int(counts[position])}" for position in order[:_SHOWN_COLUMNS])
    return f"; most missing: {shown}" if shown else ""


def _number(value: float) -> str:
    """``-200.0`` -> ``"-200"``; other floats unchanged."""
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class _NonNumeric:
    """The cells of a column that are neither numbers nor :data:`MISSING_TOKENS`."""

    count: int
    examples: tuple[str, ...]
    """Up to :data:`_SHOWN_VALUES` distinct values, quoted."""
    rows: tuple[int, ...]
    """The first :data:`_SHOWN_VALUES` data rows holding one (1 is the first row after the header)."""


def _non_numeric_message(source: str, bad: dict[str, _NonNumeric], targets: Sequence[str]) -> str:
    """Which selected columns are not numeric, how many cells and where, and the flag that fixes it:
    ``--exclude a,b`` for inputs, another ``--targets`` choice for targets."""
    described = "; ".join(
        f"{column!r}: {cells.count} cell{'s' if cells.count > 1 else ''} such as {', '.join(cells.examples)} "
        f"(data row{'s' if len(cells.rows) > 1 else ''} {', '.join(str(row) for row in cells.rows)}"
        f"{', …' if cells.count > len(cells.rows) else ''})"
        for column, cells in bad.items()
    )
    bad_targets = [column for column in bad if column in targets]
    bad_inputs = [column for column in bad if column not in targets]
    fixes = []
    if bad_inputs:
        fixes.append(f"drop the inputs with --exclude {shlex.quote(','.join(bad_inputs))}")
    if bad_targets:
        fixes.append(f"choose --targets without {', '.join(repr(column) for column in bad_targets)}")
    missing = ", ".join(repr(token) for token in sorted(MISSING_TOKENS))
    return (
        f"selected columns of {source} are not numeric: {described}. {'; '.join(fixes).capitalize()}, or "
        f"mark missing values with one of {missing} (case-insensitive) or --missing-value"
    )


def _parse_numbers(column: RawColumn) -> NDArray[np.float64] | _NonNumeric:
    """A column as float64 (NaN where missing), or its cells that are not numbers."""
    if isinstance(column, np.ndarray):
        return column
    try:
        return np.array(column, dtype=np.float64)
    except ValueError:
        pass  # an empty, missing or non-numeric value: parse value by value
    values = np.empty(len(column), dtype=np.float64)
    examples: list[str] = []
    rows: list[int] = []
    count = 0
    for row, text in enumerate(column):
        if text.lower() in MISSING_TOKENS:
            values[row] = math.nan
            continue
        try:
            values[row] = float(text)
        except ValueError:
            count += 1
            if len(rows) < _SHOWN_VALUES:
                rows.append(row + 1)
            if len(examples) < _SHOWN_VALUES and repr(text) not in examples:
                examples.append(repr(text))
            values[row] = math.nan
    return _NonNumeric(count, tuple(examples), tuple(rows)) if count else values

"""The seven UCI regression data sets of the TIC-TAC / ToSS experiments, read from ``--data-dir``.

Each data set gets the column handling of the TIC-TAC loader (research notes, section 6.3), except that the
``stabf`` label of ``electrical`` is dropped:

==============  =================  ==========================================================================
name            file               handling
==============  =================  ==========================================================================
abalone         abalone.csv        no header row: columns ``c0`` .. ``c7``
air_quality     air_quality.csv    drop ``NMHC(GT)``; ``-200`` is missing; ``Date`` (dd/mm/yyyy) becomes
                                   ``day``, ``month`` (the year is dropped) and ``Time`` (HH.MM.SS) becomes
                                   ``hour``, in place of the two columns
concrete        concrete.csv       as is (UTF-8 BOM, values padded with spaces)
electrical      electrical.csv     drop ``stabf`` (the stable/unstable label, a threshold of ``stab``)
energy          energy.csv         as is (UTF-8 BOM, CRLF, 528 blank rows)
wine_red        wine_red.csv       as is (``;``-separated, quoted header)
wine_white      wine_white.csv     as is (``;``-separated, quoted header)
==============  =================  ==========================================================================

Without ``--targets`` the first ``int(0.25 C)`` columns (at least one) in file order are the inputs and the
remaining 75 % the targets, the column counts of the TIC-TAC protocol (which permutes the columns anyway).
With ``--inputs`` alone, every other column is a target.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from covserve.training.data._columns import DEFAULT_INPUT_FRACTION, ColumnRequest, build_table
from covserve.training.data._files import RawColumn, RawTable, read_file
from covserve.training.data._table import Table
from covserve.training.errors import UsageError

__all__ = ["AIR_QUALITY_MISSING", "UCI_DATASETS", "UCI_NAMES", "UciDataset", "load_uci"]

AIR_QUALITY_MISSING: Final = -200.0
"""The value ``air_quality.csv`` records for a failed sensor reading."""

_DATE_COLUMN: Final = "Date"
_TIME_COLUMN: Final = "Time"
_DATE_FORMAT: Final = "%d/%m/%Y"
_TIME_FORMAT: Final = "%H.%M.%S"


@dataclass(frozen=True)
class UciDataset:
    """How one UCI file is read.

    Attributes
    ----------
    name : str
        The name after ``uci:``.
    filename : str
        The file inside ``--data-dir``.
    header : bool
        Whether the first row holds the column names.
    drop : tuple[str, ...]
        Columns removed before anything else, with the reason in ``drop_reason``.
    drop_reason : str
        Why ``drop`` is removed, for the description.
    missing_value : float or None
        A sentinel that marks a missing value in this file.
    transform : callable or None
        Turns columns into numeric ones (e.g. dates), returning the new table and a description line.
    """

    name: str
    filename: str
    header: bool = True
    drop: tuple[str, ...] = ()
    drop_reason: str = ""
    missing_value: float | None = None
    transform: Callable[[RawTable], tuple[RawTable, str]] | None = None


def _parse_times(
    raw: RawTable, column: str, time_format: str, fields: dict[str, Callable[[datetime], int]]
) -> dict[str, NDArray[np.float64]]:
    """Parse the text column ``column`` with ``time_format`` into one float column per entry of ``fields``.

    Empty values become NaN (dropped later as missing); any other unparsable value is a ``UsageError``.
    Each distinct text is parsed once (dates and hours repeat across rows).
    """
    values = raw.columns[column]
    if not isinstance(values, list):
        raise UsageError(f"column {column!r} of {raw.source} is numeric; expected text like {time_format!r}")
    parsed = {name: np.full(raw.rows, math.nan) for name in fields}
    stamps: dict[str, datetime] = {}
    for row, text in enumerate(values):
        if not text:
            continue
        stamp = stamps.get(text)
        if stamp is None:
            try:
                stamp = stamps[text] = datetime.strptime(text, time_format)
            except ValueError:
                raise UsageError(
                    f"column {column!r} of {raw.source}, data row {row + 1}: {text!r} does not match the "
                    f"format {time_format!r}"
                ) from None
        for name, field in fields.items():
            parsed[name][row] = field(stamp)
    return parsed


def _air_quality_dates(raw: RawTable) -> tuple[RawTable, str]:
    """Replace ``Date`` by ``day``, ``month`` and ``Time`` by ``hour``, in place."""
    derived = {
        _DATE_COLUMN: _parse_times(
            raw,
            _DATE_COLUMN,
            _DATE_FORMAT,
            {"day": lambda stamp: stamp.day, "month": lambda stamp: stamp.month},
        ),
        _TIME_COLUMN: _parse_times(raw, _TIME_COLUMN, _TIME_FORMAT, {"hour": lambda stamp: stamp.hour}),
    }
    columns: dict[str, RawColumn] = {}
    for name, values in raw.columns.items():
        if name in derived:
            columns.update(derived[name])
        else:
            columns[name] = values
    line = "Date (dd/mm/yyyy) became day and month (the year is dropped), Time (HH.MM.SS) became hour"
    return dataclasses.replace(raw, columns=columns), line


UCI_DATASETS: Final = {
    dataset.name: dataset
    for dataset in (
        UciDataset("abalone", "abalone.csv", header=False),
        UciDataset(
            "air_quality",
            "air_quality.csv",
            drop=("NMHC(GT)",),
            drop_reason="mostly -200 (missing), as the TIC-TAC loader does",
            missing_value=AIR_QUALITY_MISSING,
            transform=_air_quality_dates,
        ),
        UciDataset("concrete", "concrete.csv"),
        UciDataset(
            "electrical",
            "electrical.csv",
            drop=("stabf",),
            drop_reason="the stable/unstable label, a threshold of 'stab'",
        ),
        UciDataset("energy", "energy.csv"),
        UciDataset("wine_red", "wine_red.csv"),
        UciDataset("wine_white", "wine_white.csv"),
    )
}
"""Every ``uci:<name>`` data set, by name."""

UCI_NAMES: Final = tuple(UCI_DATASETS)
"""The valid names after ``uci:``."""


def load_uci(
    name: str, data_dir: Path, request: ColumnRequest, missing_value: float | None
) -> tuple[Table, list[str]]:
    """Read and clean ``uci:<name>`` from ``data_dir``.

    Parameters
    ----------
    name : str
        One of :data:`UCI_NAMES`.
    data_dir : Path
        The folder holding the CSV files (``--data-dir``).
    request : ColumnRequest
        ``--inputs``, ``--targets``, ``--exclude``; targets default as described in the module docstring.
    missing_value : float or None
        ``--missing-value``, in addition to the data set's own sentinel.

    Returns
    -------
    (Table, list[str])
        The table (inputs (N, M), targets (N, D)) and description lines.

    Raises
    ------
    UsageError
        For an unknown name (listing the valid ones), a missing ``--data-dir`` or file, or a bad column
        choice.
    """
    dataset = UCI_DATASETS.get(name)
    if dataset is None:
        valid = ", ".join(f"uci:{known}" for known in UCI_NAMES)
        raise UsageError(f"unknown UCI data set {name!r} in --data; valid names: {valid}")
    if not data_dir.is_dir():
        raise UsageError(
            f"--data-dir {data_dir} is not a folder; it must hold the UCI files ({dataset.filename} for "
            f"uci:{name})"
        )
    path = data_dir / dataset.filename
    if not path.is_file():
        raise UsageError(
            f"{path} not found: --data-dir {data_dir} must hold {dataset.filename} for uci:{name}"
        )
    raw = read_file(path, header=dataset.header, source=f"uci:{name} ({path})")
    lines = list(raw.notes)
    if dataset.drop:
        absent = [column for column in dataset.drop if column not in raw.columns]
        if absent:
            raise UsageError(f"{path} lacks the column(s) {absent} expected in uci:{name}")
        columns = {column: values for column, values in raw.columns.items() if column not in dataset.drop}
        raw = dataclasses.replace(raw, columns=columns)
        lines.append(f"dropped column(s) {', '.join(dataset.drop)}: {dataset.drop_reason}")
    if dataset.transform is not None:
        raw, line = dataset.transform(raw)
        lines.append(line)
    if request.targets is None and request.inputs is None:
        lines.append(
            f"note: no --targets, so as in the TIC-TAC experiments the first {DEFAULT_INPUT_FRACTION:.0%} of "
            "the columns (at least one) are inputs and the rest targets; name its own targets with "
            f"--targets (its columns: {', '.join(raw.columns)})"
        )
    request = dataclasses.replace(request, default_targets=True)
    sentinels = [value for value in (dataset.missing_value, missing_value) if value is not None]
    table, table_lines = build_table(raw, request, sentinels)
    return table, lines + table_lines

"""Read a CSV or parquet file into named raw columns, tolerating the quirks of real files.

CSV files: the delimiter is sniffed (``csv.Sniffer`` on the first :data:`SNIFF_CHARS` characters, among
:data:`CANDIDATE_DELIMITERS`, falling back to ``,``), a UTF-8 byte-order mark is skipped, CRLF and quoted
fields are handled by :mod:`csv`, whitespace around headers and values is stripped, and blank rows (no
fields, or only empty ones) are skipped and counted. Parquet files are read with pandas and pyarrow. No
value is converted to a number here: that happens only for the columns a user selects.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
from numpy.typing import NDArray

from covserve.training.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CANDIDATE_DELIMITERS",
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "SNIFF_CHARS",
    "RawColumn",
    "RawTable",
    "read_file",
]

CSV_SUFFIXES: Final = (".csv", ".tsv")
"""Delimited text files (the delimiter is sniffed, so a ``.tsv`` is read the same way)."""

PARQUET_SUFFIXES: Final = (".parquet", ".pq")

SNIFF_CHARS: Final = 64 * 1024
"""Characters of a CSV file shown to ``csv.Sniffer`` (whole lines only)."""

CANDIDATE_DELIMITERS: Final = ",;\t|"
"""The delimiters the sniffer may choose from; spaces are excluded because header names contain them."""

DEFAULT_DELIMITER: Final = ","

ENCODING: Final = "utf-8-sig"
"""UTF-8, skipping a leading byte-order mark (``concrete.csv`` and ``energy.csv`` start with one)."""

POSITIONAL_PREFIX: Final = "c"
"""Columns without a header name are called ``c0``, ``c1``, ... by their position."""

RawColumn = NDArray[np.float64] | list[str]
"""A column as read: numbers (parquet numeric columns, NaN where missing) or stripped text ("" if empty)."""


@dataclass(frozen=True)
class RawTable:
    """A file's columns, in file order, before any selection or numeric conversion.

    Attributes
    ----------
    source : str
        How error messages name the origin, e.g. ``"data.csv"`` or ``"uci:energy (../x/energy.csv)"``.
    columns : dict[str, RawColumn]
        Column name to its ``N`` values, in file order.
    rows : int
        ``N``, the rows read (blank rows already skipped).
    notes : tuple[str, ...]
        What was done while reading, one human-readable line each.
    """

    source: str
    columns: dict[str, RawColumn]
    rows: int
    notes: tuple[str, ...]


def _positional_names(count: int) -> list[str]:
    """``["c0", "c1", ...]``: names for ``count`` columns of a file without a header row."""
    return [f"{POSITIONAL_PREFIX}{position}" for position in range(count)]


def read_file(path: Path, *, header: bool = True, source: str | None = None) -> RawTable:
    """Read a ``.csv``/``.tsv`` or ``.parquet``/``.pq`` file.

    Parameters
    ----------
    path : Path
        The file.
    header : bool, default True
        Whether the first non-blank CSV row holds the column names; without one the columns are named
        ``c0, c1, ...``.
    source : str, optional
        Name of the file in messages; defaults to ``str(path)``.

    Returns
    -------
    RawTable

    Raises
    ------
    UsageError
        If the file does not exist, cannot be read or parsed, has an unknown extension, has no columns,
        has rows of the wrong length, or names a column twice; the message names the file.
    """
    name = str(path) if source is None else source
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
        raise UsageError(
            f"--data {path}: unknown file type {path.suffix!r}; use a file ending in {known}, "
            "or one of 'synthetic', 'sinusoid', 'uci:<name>'"
        )
    if not path.exists():
        raise UsageError(f"data file {name} does not exist (check --data)")
    if not path.is_file():
        raise UsageError(f"data file {name} is not a regular file")
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, name)
    return _read_csv(path, name, header=header)


def _read_csv(path: Path, name: str, *, header: bool) -> RawTable:
    """Parse a delimited text file; see :func:`read_file`."""
    try:
        text = path.read_text(encoding=ENCODING)
    except (OSError, UnicodeError) as error:
        raise UsageError(f"cannot read data file {name}: {error}") from None
    delimiter = _sniff_delimiter(text)
    records: list[tuple[int, list[str]]] = []
    blank = 0
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for fields in reader:
            stripped = [field.strip() for field in fields]
            if any(stripped):
                records.append((reader.line_num, stripped))
            else:
                blank += 1
    except csv.Error as error:
        raise UsageError(f"cannot parse data file {name} near line {reader.line_num}: {error}") from None
    if not records:
        raise UsageError(f"data file {name} is empty")
    unnamed: list[str] = []
    if header:
        _, names = records.pop(0)
        unnamed = [f"{POSITIONAL_PREFIX}{position}" for position, field in enumerate(names) if not field]
        names = [field or f"{POSITIONAL_PREFIX}{position}" for position, field in enumerate(names)]
    else:
        names = _positional_names(len(records[0][1]))
    _check_unique(names, name)
    for line, fields in records:
        if len(fields) != len(names):
            raise UsageError(
                f"data file {name}, line {line}: {len(fields)} fields, but the "
                f"{'header has' if header else 'first row has'} {len(names)}"
            )
    values: dict[str, RawColumn] = {
        column: [fields[position] for _, fields in records] for position, column in enumerate(names)
    }
    notes = [f"read {len(records)} rows and {len(names)} columns from {name} (delimiter {delimiter!r})"]
    if blank:
        notes.append(f"skipped {blank} blank rows (no values)")
    if unnamed:
        notes.append(
            f"note: {len(unnamed)} column(s) with a blank header, named by position: {', '.join(unnamed)}"
        )
    return RawTable(source=name, columns=values, rows=len(records), notes=tuple(notes))


def _sniff_delimiter(text: str) -> str:
    """The delimiter ``csv.Sniffer`` finds in the first whole lines of ``text``, else ``,``."""
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    try:
        return csv.Sniffer().sniff(sample, delimiters=CANDIDATE_DELIMITERS).delimiter
    except csv.Error:
        return DEFAULT_DELIMITER


def _read_parquet(path: Path, name: str) -> RawTable:
    """Read a parquet file; numeric and boolean columns become float arrays, others stripped text."""
    import pandas as pd  # half a second to import: only parquet files need it

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read parquet file {name}: {error}") from None
    names = [str(column).strip() for column in frame.columns]
    _check_unique(names, name)
    if not names:
        raise UsageError(f"data file {name} has no columns")
    values: dict[str, RawColumn] = {
        column: _parquet_column(frame.iloc[:, position]) for position, column in enumerate(names)
    }
    notes = (f"read {len(frame)} rows and {len(names)} columns from {name}",)
    return RawTable(source=name, columns=values, rows=len(frame), notes=notes)


def _parquet_column(series: pd.Series) -> RawColumn:
    """Numbers as float64 with NaN for missing values, anything else as stripped text ("" if missing)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        numbers: NDArray[np.float64] = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return numbers
    missing = (None, pd.NA, pd.NaT)
    return [
        ""
        if any(value is marker for marker in missing) or (isinstance(value, float) and value != value)
        else str(value).strip()
        for value in series.tolist()
    ]


def _check_unique(names: Sequence[str], source: str) -> None:
    """Raise ``UsageError`` naming ``source`` if a column name occurs twice."""
    seen: set[str] = set()
    for column in names:
        if column in seen:
            raise UsageError(f"data file {source} has two columns named {column!r}; rename one")
        seen.add(column)

"""Tabular data for the trainer: read a data set, clean it and split it.

``DataConfig`` names the data set (``synthetic``, ``sinusoid``, ``uci:<name>`` or a CSV/parquet file), the
input and target columns, and the split protocol (``holdout`` or the TIC-TAC ``tictac``). ``load_split``
returns a :class:`Split` of three :class:`Table` s (inputs (N, M), targets (N, D), float64) with a
human-readable description of what was read and dropped. Nothing is standardised here except by the
``tictac`` protocol itself; the trainer fits its scaling on the training part.

Every problem the user can fix raises :class:`~training.errors.UsageError` naming the file, column or flag.
"""

from __future__ import annotations

from covserve.training.data._builtin import BUILTIN_NAMES
from covserve.training.data._config import DataConfig, Protocol
from covserve.training.data._load import load_split, load_table
from covserve.training.data._splits import TICTAC_SCALE, check_column_scales, make_split
from covserve.training.data._table import Split, Table
from covserve.training.data._uci import UCI_NAMES

__all__ = [
    "BUILTIN_NAMES",
    "TICTAC_SCALE",
    "UCI_NAMES",
    "DataConfig",
    "Protocol",
    "Split",
    "Table",
    "check_column_scales",
    "load_split",
    "load_table",
    "make_split",
]

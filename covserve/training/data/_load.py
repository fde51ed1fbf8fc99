"""Dispatch ``--data`` to the right loader and put loading and splitting together."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Final

from covserve.training.data._builtin import BUILTIN_NAMES, load_builtin
from covserve.training.data._columns import ColumnRequest, build_table
from covserve.training.data._config import DataConfig
from covserve.training.data._files import read_file
from covserve.training.data._splits import make_split
from covserve.training.data._table import Split, Table
from covserve.training.data._uci import load_uci

__all__ = ["UCI_PREFIX", "load_split", "load_table"]

UCI_PREFIX: Final = "uci:"


def load_table(config: DataConfig) -> tuple[Table, str]:
    """Load the whole data set named by ``config.data``, cleaned but neither split nor scaled.

    Parameters
    ----------
    config : DataConfig
        ``data`` is ``"synthetic"``, ``"sinusoid"``, ``"uci:<name>"`` or a ``.csv``/``.parquet`` path; the
        column options apply to files and UCI data sets.

    Returns
    -------
    (Table, str)
        The table (inputs (N, M), targets (N, D); truth arrays for generated data) and a description, one
        fact a line: what was read, which rows and columns were dropped and why, the inputs and targets.

    Raises
    ------
    UsageError
        For anything the user can fix; the message names the file, column or flag at fault.
    """
    request = ColumnRequest(inputs=config.inputs, targets=config.targets, exclude=config.exclude)
    if config.data in BUILTIN_NAMES:
        table, lines = load_builtin(config)
    elif config.data.startswith(UCI_PREFIX):
        name = config.data.removeprefix(UCI_PREFIX).strip()
        table, lines = load_uci(name, config.data_dir, request, config.missing_value)
    else:
        raw = read_file(Path(config.data).expanduser())
        sentinels = [] if config.missing_value is None else [config.missing_value]
        table, table_lines = build_table(raw, request, sentinels)
        lines = [*raw.notes, *table_lines]
    return table, "\n".join(lines)


def load_split(config: DataConfig) -> Split:
    """:func:`load_table`, then :func:`~training.data.make_split`; the description covers both steps."""
    table, description = load_table(config)
    split = make_split(table, config)
    return dataclasses.replace(split, description=f"{description}\n{split.description}")

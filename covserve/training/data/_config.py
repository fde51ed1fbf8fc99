"""What to load and how to split it: :class:`DataConfig`, validated with the command-line flag names."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from covserve.training.data._table import MIN_ROWS

__all__ = ["DEFAULT_DATA_DIR", "DataConfig", "Protocol"]

DEFAULT_DATA_DIR: Final = Path("../shared/datasets/uci")
"""Where the UCI CSV files live, relative to the repository root (they are never copied into it)."""


_ERROR_TYPE: Final = "data_config"
"""The pydantic error type of every :class:`DataConfig` check."""


def _invalid(message: str) -> PydanticCustomError:
    """A validation error whose message is exactly ``message`` (no "Value error," prefix, no templating)."""
    return PydanticCustomError(_ERROR_TYPE, "{message}", {"message": message})


def _flag(field: str) -> str:
    """The command-line flag of a :class:`DataConfig` field: ``"in_dim"`` -> ``"--in-dim"``."""
    return "--" + field.replace("_", "-")


class Protocol(str, Enum):
    """How a table becomes training, validation and test parts."""

    HOLDOUT = "holdout"
    """Shuffle the rows with the seed and cut them by ``--validation-fraction`` and ``--test-fraction``."""
    TICTAC = "tictac"
    """The TIC-TAC / ToSS UCI protocol: every column standardised to std 10, the columns permuted with the
    seed, the first quarter become inputs, and every part is the whole table (research notes, section 6.3)."""


class DataConfig(BaseModel):
    """Which data set to read and how to split it; one field per ``covserve-train`` flag.

    ``data`` is ``"synthetic"`` (:func:`training.synthetic.multivariate`), ``"sinusoid"``
    (:func:`training.synthetic.sinusoid`), ``"uci:<name>"`` (a file of ``data_dir``) or the path of a
    ``.csv`` or ``.parquet`` file. Column lists hold names or inclusive ranges ``"first:last"`` in file order.

    Invalid values raise pydantic's ``ValidationError``; each error's message names the command-line flag,
    e.g. ``--in-dim must be >= 1, got 0`` (with the location ``in_dim``), so the caller can turn it into a
    :class:`~training.errors.UsageError` that also names the configuration file.
    """

    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        default="synthetic",
        description="data set: synthetic | sinusoid | uci:<name> | path to a .csv or .parquet file",
    )
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="folder of the UCI files")
    inputs: list[str] | None = Field(
        default=None,
        description="comma-separated input columns or ranges A:B (unset: every column that is neither a "
        "target nor excluded)",
    )
    targets: list[str] | None = Field(
        default=None,
        description="comma-separated target columns or ranges A:B (required for files; unset for uci: "
        "means the last 75 % of the columns)",
    )
    exclude: list[str] = Field(
        default_factory=list, description="comma-separated columns to ignore (e.g. text labels)"
    )
    missing_value: float | None = Field(
        default=None, description="sentinel that marks a missing value, e.g. -200; such rows are dropped"
    )
    in_dim: int = Field(default=4, description="synthetic input dimension")
    out_dim: int = Field(default=4, description="synthetic target dimension")
    samples: int = Field(default=4000, description="synthetic/sinusoid rows")
    protocol: Protocol = Field(
        default=Protocol.HOLDOUT,
        description="holdout (an 80/10/10 split) or tictac (the paper's UCI protocol)",
    )
    validation_fraction: float = Field(default=0.1, description="validation share of the rows")
    test_fraction: float = Field(default=0.1, description="test share of the rows")
    seed: int = Field(default=0, description="seed of the split (configuration file only)")

    @field_validator("data")
    @classmethod
    def _data_not_empty(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise _invalid("--data must name a data set or a file, got an empty string")
        return stripped

    @field_validator("inputs", "targets", "exclude")
    @classmethod
    def _column_specs(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        name = _flag(str(info.field_name))
        specs = [spec.strip() for spec in value]
        if not specs and info.field_name != "exclude":
            raise _invalid(f"{name} must name at least one column (leave it out for the default)")
        if "" in specs:
            raise _invalid(f"{name} contains an empty column name: {value!r}")
        return specs

    @field_validator("in_dim", "out_dim")
    @classmethod
    def _positive_dim(cls, value: int, info: ValidationInfo) -> int:
        if value < 1:
            raise _invalid(f"{_flag(str(info.field_name))} must be >= 1, got {value}")
        return value

    @field_validator("samples")
    @classmethod
    def _enough_samples(cls, value: int) -> int:
        if value < MIN_ROWS:
            raise _invalid(f"--samples must be >= {MIN_ROWS}, got {value}")
        return value

    @field_validator("validation_fraction", "test_fraction")
    @classmethod
    def _fraction(cls, value: float, info: ValidationInfo) -> float:
        if not 0.0 <= value < 1.0:
            raise _invalid(f"{_flag(str(info.field_name))} must be in [0, 1), got {value}")
        return value

    @field_validator("seed")
    @classmethod
    def _non_negative_seed(cls, value: int) -> int:
        if value < 0:
            raise _invalid(f"--seed must be >= 0, got {value}")
        return value

    @field_validator("missing_value")
    @classmethod
    def _finite_sentinel(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise _invalid(f"--missing-value must be a finite number, got {value} (NaN is always missing)")
        return value

    @model_validator(mode="after")
    def _training_part_not_empty(self) -> DataConfig:
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise _invalid(
                "--validation-fraction + --test-fraction must be < 1 so that rows remain for training, got "
                f"{self.validation_fraction} + {self.test_fraction}"
            )
        return self

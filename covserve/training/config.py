"""Run configuration: a YAML file validated by pydantic, every field overridable by a command-line flag."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covserve.training.data import DataConfig
from covserve.training.errors import UsageError
from covserve.training.options import (
    DEFAULT_TEMPERATURE,
    LabelScheme,
    LossName,
    NeighbourIndex,
    default_neighbours,
)

__all__ = [
    "Device",
    "Hybrid",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "model_name_of",
    "parse_method",
]

NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
FALLBACK_MODEL_NAME = "model"
"""The model name when nothing of ``--data`` is usable in a directory name."""


class Device(str, Enum):
    """Where training runs: ``auto`` picks CUDA when available."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Hybrid(str, Enum):
    """The training method that is not a single loss: the W2 bound with pseudo-labels for the first
    ``hybrid_epochs`` (default: half of the epochs), then the Gaussian NLL on the same Cholesky head."""

    HYBRID = "hybrid"


def parse_method(name: str) -> LossName | Hybrid:
    """``name`` as a loss or the hybrid; ``ValueError`` listing every method otherwise."""
    for kind in (LossName, Hybrid):
        try:
            return kind(name)
        except ValueError:
            continue
    valid = ", ".join([*(loss.value for loss in LossName), Hybrid.HYBRID.value])
    raise ValueError(f"method: expected one of {valid}, got {name!r}")


class ModelConfig(BaseModel):
    """Network sizes; ``width`` defaults to TIC-TAC's ``D² + 2`` (at least 32)."""

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(
        default=None, ge=1, description="hidden units per layer (unset: max(D² + 2, 32))"
    )
    depth: int = Field(default=5, ge=0, description="residual blocks per network")


class TrainConfig(BaseModel):
    """Optimisation: TIC-TAC's UCI/multivariate defaults (AdamW, lr 3e-4, batch 32, 100 epochs)."""

    model_config = ConfigDict(extra="forbid")

    method: LossName | Hybrid = Field(
        default=LossName.W2_BOUND,
        description="loss: "
        + ", ".join(name.value for name in LossName)
        + ", or hybrid (the W2 bound with pseudo-labels, then NLL)",
    )
    hybrid_epochs: int | None = Field(
        default=None,
        ge=0,
        description="epochs of the W2 bound with pseudo-labels before --method (unset: half of --epochs "
        "for hybrid, 0 otherwise)",
    )
    epochs: int = Field(default=100, ge=1, description="maximum epochs")
    batch_size: int = Field(default=32, ge=2, description="rows per step")
    lr: float = Field(default=3e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(default=1e-2, ge=0, description="AdamW weight decay")
    patience: int = Field(default=20, ge=1, description="early-stopping patience on validation NLL, epochs")
    grad_clip: float = Field(default=10.0, gt=0, description="maximum gradient norm")
    labels: LabelScheme = Field(
        default=LabelScheme.RESIDUALS,
        description="pseudo-label scheme: targets (the paper's Algorithm 1), residuals (of the current mean "
        "network), local-linear (a weighted linear fit per neighbourhood)",
    )
    label_refresh: int = Field(
        default=1,
        ge=1,
        description="epochs of mean warm-up before residual labels, and between their refreshes",
    )
    neighbours: int | None = Field(
        default=None,
        ge=2,
        description=f"pseudo-label neighbourhood size k (unset: {default_neighbours(LabelScheme.TARGETS)} "
        f"for targets, {default_neighbours(LabelScheme.RESIDUALS)} for residuals and local-linear)",
    )
    temperature: float = Field(
        default=DEFAULT_TEMPERATURE,
        gt=0,
        description="pseudo-label softmax temperature, relative to the neighbour distances",
    )
    neighbour_index: NeighbourIndex = Field(
        default=NeighbourIndex.AUTO,
        description="pseudo-label neighbour search: auto (by the number of rows and inputs), exact (every "
        "pair), kdtree (exact, for few inputs) or faiss (approximate, its recall measured and reported)",
    )
    calibrate: bool = Field(
        default=True,
        description="scale Σ by the NLL-optimal factor on the validation rows",
    )
    device: Device = Field(
        default=Device.AUTO, description="where training runs: auto (CUDA when available), cpu or cuda"
    )
    threads: int = Field(
        default=1,
        ge=1,
        description="CPU threads for training (the per-step work is too small to share) and workers of "
        "the neighbour search",
    )
    seed: int = Field(
        default=0,
        description="seed of the weights and batches (the split has its own, data.seed, in a "
        "configuration file)",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, value: object) -> object:
        return parse_method(value) if isinstance(value, str) else value

    @property
    def bound_epochs(self) -> int:
        """Epochs of the W2 bound before ``method``: ``hybrid_epochs``, or its default."""
        if self.hybrid_epochs is not None:
            return self.hybrid_epochs
        return self.epochs // 2 if self.method is Hybrid.HYBRID else 0

    @property
    def label_neighbours(self) -> int:
        """``neighbours``, or the default of the label scheme when it is not set."""
        return self.neighbours if self.neighbours is not None else default_neighbours(self.labels)

    @model_validator(mode="after")
    def _hybrid_needs_a_second_phase(self) -> TrainConfig:
        if self.bound_epochs >= self.epochs:
            raise ValueError(f"--hybrid-epochs ({self.bound_epochs}) must be below --epochs ({self.epochs})")
        if self.method is Hybrid.HYBRID and self.bound_epochs == 0:
            raise ValueError(
                "--method hybrid needs at least one epoch of the W2 bound (--hybrid-epochs >= 1)"
            )
        return self


class RunConfig(BaseModel):
    """Everything one ``covserve-train`` run needs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]*)?$",
        description="model name in the repository (unset: from --data, e.g. gt for gt.csv, energy for "
        "uci:energy)",
    )
    repository: Path = Field(default=Path("models"), description="model repository")
    run_dir: Path = Field(default=Path("runs"), description="parent folder of run directories")
    allow_schema_change: bool = Field(
        default=False,
        description="publish even when the inputs or targets differ from the model's latest version",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _name_from_data(self) -> RunConfig:
        if not self.name:
            self.name = model_name_of(self.data.data)
        return self


def model_name_of(data: str) -> str:
    """The default model name for ``--data``: a file's stem, a UCI data set's name, a generator's name;
    characters a directory name should not hold become ``-``."""
    stem = data.removeprefix("uci:") if data.startswith("uci:") else Path(data).stem or data
    name = NAME_UNSAFE.sub("-", stem).lstrip("-_.")
    return name or FALLBACK_MODEL_NAME


def _format_errors(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "config"
        parts.append(f"{location}: {item['msg']}")
    return f"{source}: " + "; ".join(parts)


def load_config(path: Path | None, overrides: dict[str, dict[str, object]]) -> RunConfig:
    """Read ``path`` (YAML, optional), apply flag ``overrides`` by section, validate.

    ``overrides`` maps ``"run"``, ``"data"``, ``"model"`` and ``"train"`` to the flags that were given.
    Raises :class:`UsageError` naming the file or flag.
    """
    document: dict[str, object] = {}
    source = "flags"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise UsageError(f"--config {path}: cannot read ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise UsageError(f"--config {path}: not valid YAML ({error})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"--config {path}: expected a mapping at the top level")
        document = dict(loaded or {})
        source = f"{path} (with flags)"
    document.update({key: value for key, value in overrides.get("run", {}).items() if value is not None})
    for section in ("data", "model", "train"):
        given = {key: value for key, value in overrides.get(section, {}).items() if value is not None}
        if given:
            existing = document.get(section) or {}
            if not isinstance(existing, dict):
                raise UsageError(f"{source}: section {section!r} must be a mapping")
            document[section] = {**existing, **given}
    try:
        return RunConfig.model_validate(document)
    except ValidationError as error:
        raise UsageError(_format_errors(error, source)) from None

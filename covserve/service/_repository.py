"""Discover and validate the published model versions of a model repository (numpy, json, hashlib only).

The repository layout and ``model.json`` schema are :mod:`covserve.repository`'s, the contract
``covserve.training`` writes (see ``models/README.md``)::

    <root>/<name>/<version>/model.onnx  # x (B, M) → mean (B, D), covariance (B, D, D), scale (B, D, D)
    <root>/<name>/<version>/model.json  # names, dims, sha256 of model.onnx, training-input statistics, …

Only purely numeric version directories count; ``.tmp-*`` (an export in progress or a crashed one) and every
other name are ignored silently. :func:`scan_repository` never raises for a broken version: it records a
:class:`Problem` naming the file and the reason, skips that version and keeps loading the others.
:func:`read_version` validates one version directory and raises :class:`InvalidVersionError`.

This module must stay importable without torch and without onnx (the service image has neither); the
validation of one version is :func:`covserve.repository.read_metadata`, plus the precision matrix here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from covserve.repository import (
    METADATA_FILE,
    MODEL_FILE,
    ContractError,
    ModelMetadata,
    is_version_name,
    read_metadata,
)

__all__ = [
    "InvalidVersionError",
    "ModelVersion",
    "Problem",
    "RepositoryScan",
    "read_version",
    "scan_repository",
]

COVARIANCE_NEGATIVE_RTOL = 1e-8
"""Smallest accepted eigenvalue of the training input covariance, relative to its largest: ``−1e-8``.

Rounding makes a singular covariance's zero eigenvalues slightly negative; anything below this is not a
covariance matrix at all.
"""

PRECISION_RIDGE_RTOL = 1e-9
"""Ridge added to every eigenvalue, relative to the largest, when the covariance is (nearly) singular.

An eigenvalue below ``PRECISION_RIDGE_RTOL · λ_max`` would make the precision matrix numerically
meaningless; with the ridge a direction in which the training inputs never varied gets a huge but finite
precision, so any deviation along it scores as far out of distribution.
"""

ZERO_COVARIANCE_RIDGE = 1.0
"""Ridge used when the training input covariance is exactly zero (all training inputs identical)."""


class InvalidVersionError(ContractError):
    """One version directory is not a valid published model; ``reason`` names the file and the problem."""


@dataclass(frozen=True)
class ModelVersion:
    """One validated version directory ``<root>/<name>/<version>``.

    ``training_mean`` ``(M,)`` and ``training_precision`` ``(M, M)`` (the inverse of the training input
    covariance, with a small ridge when that is singular) are in raw input units, for the Mahalanobis
    out-of-distribution score ``(x − mean)ᵀ precision (x − mean)``.
    """

    path: Path
    metadata: ModelMetadata = field(repr=False)
    training_mean: NDArray[np.float64] = field(repr=False)
    training_precision: NDArray[np.float64] = field(repr=False)

    @property
    def name(self) -> str:
        """The model name (``model.json``'s ``name``, which is also the parent directory's name)."""
        return self.metadata.name

    @property
    def version(self) -> int:
        """The version number (``model.json``'s ``version``, which is also the directory's name)."""
        return self.metadata.version

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``M`` input names, in the graph's column order."""
        return self.metadata.input_names

    @property
    def target_names(self) -> tuple[str, ...]:
        """The ``D`` target names, in the outputs' order."""
        return self.metadata.target_names

    @property
    def in_dim(self) -> int:
        """``M``, the number of inputs."""
        return self.metadata.in_dim

    @property
    def out_dim(self) -> int:
        """``D``, the number of targets."""
        return self.metadata.out_dim

    @property
    def model_path(self) -> Path:
        """``<path>/model.onnx``."""
        return self.path / MODEL_FILE

    @property
    def metadata_path(self) -> Path:
        """``<path>/model.json``."""
        return self.path / METADATA_FILE

    @property
    def onnx_sha256(self) -> str:
        """The sha256 of ``model.onnx`` recorded in ``model.json`` (and checked against the file)."""
        return self.metadata.onnx_sha256


@dataclass(frozen=True)
class Problem:
    """A version directory (or the repository root) that was skipped, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class RepositoryScan:
    """Every valid version, sorted by ``(name, version)``, and every problem met on the way."""

    versions: tuple[ModelVersion, ...]
    problems: tuple[Problem, ...]


# ----------------------------------------------------------------------------------------------- scanning


def scan_repository(root: Path) -> RepositoryScan:
    """Validate every ``<root>/<name>/<version>`` directory whose ``<version>`` is a decimal integer.

    Model directories are the non-hidden subdirectories of ``root``; inside them only names made of ASCII
    digits count as versions, everything else (``.tmp-*`` exports in progress, stray files) is ignored.
    Never raises for repository contents: a missing or unreadable root and every invalid version become a
    :class:`Problem`, and the remaining versions still load.
    """
    root = Path(root)
    if not root.exists():
        return RepositoryScan((), (Problem(root, f"{root}: the model repository does not exist"),))
    if not root.is_dir():
        return RepositoryScan((), (Problem(root, f"{root}: the model repository is not a directory"),))
    versions: list[ModelVersion] = []
    problems: list[Problem] = []
    try:
        model_dirs = sorted(
            entry for entry in root.iterdir() if not entry.name.startswith(".") and entry.is_dir()
        )
    except OSError as exc:
        return RepositoryScan(
            (), (Problem(root, f"{root}: cannot list the model repository: {_strerror(exc)}"),)
        )
    for model_dir in model_dirs:
        try:
            entries = [entry for entry in model_dir.iterdir() if is_version_name(entry.name)]
        except OSError as exc:
            problems.append(
                Problem(model_dir, f"{model_dir}: cannot list the model directory: {_strerror(exc)}")
            )
            continue
        for entry in sorted(entries, key=lambda path: (int(path.name), path.name)):
            try:
                versions.append(read_version(entry))
            except InvalidVersionError as exc:
                problems.append(Problem(entry, exc.reason))
    versions.sort(key=lambda version: (version.name, version.version))
    return RepositoryScan(tuple(versions), tuple(problems))


# ------------------------------------------------------------------------------------------- one version


def read_version(path: Path) -> ModelVersion:
    """Validate the version directory ``path`` (:func:`covserve.repository.read_metadata`) and return it
    with the training inputs' precision matrix.

    Raises
    ------
    InvalidVersionError
        With a reason naming the offending file (or directory) and what was expected.
    """
    path = Path(path)
    try:
        metadata = read_metadata(path)
    except ContractError as error:
        raise InvalidVersionError(error.reason) from None
    return ModelVersion(
        path=path,
        metadata=metadata,
        training_mean=metadata.training_inputs.mean_array(),
        training_precision=_precision(metadata.training_inputs.covariance_array(), path / METADATA_FILE),
    )


def _precision(covariance: NDArray[np.float64], metadata_path: Path) -> NDArray[np.float64]:
    """The inverse ``(M, M)`` of a symmetric covariance, with a ridge when it is (nearly) singular.

    ``C = V diag(λ) Vᵀ`` gives ``C⁻¹ = V diag(1 / λ) Vᵀ``; when ``λ_min < PRECISION_RIDGE_RTOL · λ_max``
    every eigenvalue gets ``+ PRECISION_RIDGE_RTOL · λ_max`` first (``ZERO_COVARIANCE_RIDGE`` for ``C = 0``).
    """
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (covariance + covariance.T))
    largest = float(eigenvalues[-1])
    smallest = float(eigenvalues[0])
    if smallest < -COVARIANCE_NEGATIVE_RTOL * max(largest, 0.0) or (largest <= 0.0 and smallest < 0.0):
        raise InvalidVersionError(
            f"{metadata_path}: 'training_inputs'['covariance'] is not positive semi-definite "
            f"(eigenvalues from {smallest:.6g} to {largest:.6g})"
        )
    if largest <= 0.0:
        ridge = ZERO_COVARIANCE_RIDGE
    elif smallest < PRECISION_RIDGE_RTOL * largest:
        ridge = PRECISION_RIDGE_RTOL * largest
    else:
        ridge = 0.0
    shifted = np.maximum(eigenvalues, 0.0) + ridge
    precision: NDArray[np.float64] = (eigenvectors / shifted) @ eigenvectors.T
    symmetric: NDArray[np.float64] = 0.5 * (precision + precision.T)
    return symmetric


def _strerror(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

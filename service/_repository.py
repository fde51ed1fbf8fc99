"""Discover and validate the published model versions of a model repository (numpy, json, hashlib only).

The repository layout is written by ``training.export`` (see ``models/README.md``)::

    <root>/<name>/<version>/model.onnx  # x (B, M) → mean (B, D), covariance (B, D, D), scale (B, D, D)
    <root>/<name>/<version>/model.json  # names, dims, sha256 of model.onnx, training-input statistics, …

Only purely numeric version directories count; ``.tmp-*`` (an export in progress or a crashed one) and every
other name are ignored silently. :func:`scan_repository` never raises for a broken version: it records a
:class:`Problem` naming the file and the reason, skips that version and keeps loading the others.
:func:`read_version` validates one version directory and raises :class:`InvalidVersionError`.

This module must stay importable without torch and without onnx (the service image has neither).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "INPUT_NAME",
    "METADATA_FILE",
    "MODEL_FILE",
    "OUTPUT_NAMES",
    "InvalidVersionError",
    "ModelVersion",
    "Problem",
    "RepositoryScan",
    "read_version",
    "scan_repository",
]

MODEL_FILE = "model.onnx"
"""The ONNX graph inside a version directory (same as ``training.export.MODEL_FILE``)."""

METADATA_FILE = "model.json"
"""The metadata inside a version directory (same as ``training.export.METADATA_FILE``)."""

INPUT_NAME = "x"
"""The graph's one input, raw-unit features ``(B, M)`` float32."""

OUTPUT_NAMES: tuple[str, str, str] = ("mean", "covariance", "scale")
"""The graph's outputs: ``(B, D)``, ``(B, D, D)``, ``(B, D, D)``, all float32, raw units."""

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
"""A lower-case hex sha256 digest, as ``hashlib.sha256().hexdigest()`` writes it."""

COVARIANCE_SYMMETRY_RTOL = 1e-8
"""Largest accepted ``max |C − Cᵀ| / max |C|`` of the training input covariance in ``model.json``."""

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

_HASH_BLOCK_BYTES = 1 << 20


class InvalidVersionError(Exception):
    """One version directory is not a valid published model; ``reason`` names the file and the problem."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ModelVersion:
    """One validated version directory ``<root>/<name>/<version>``.

    ``training_mean`` ``(M,)`` and ``training_precision`` ``(M, M)`` (the inverse of the training input
    covariance, with a small ridge when that is singular) are in raw input units, for the Mahalanobis
    out-of-distribution score ``(x − mean)ᵀ precision (x − mean)``.
    """

    name: str
    version: int
    path: Path
    metadata: Mapping[str, Any] = field(repr=False)
    input_names: tuple[str, ...]
    target_names: tuple[str, ...]
    in_dim: int
    out_dim: int
    training_mean: NDArray[np.float64] = field(repr=False)
    training_precision: NDArray[np.float64] = field(repr=False)

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
        return str(self.metadata["onnx_sha256"])


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
            entries = [entry for entry in model_dir.iterdir() if _is_version_name(entry.name)]
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


def _is_version_name(name: str) -> bool:
    return name.isascii() and name.isdigit()


# ------------------------------------------------------------------------------------------- one version


def read_version(path: Path) -> ModelVersion:
    """Validate the version directory ``path`` and return it.

    Checks, in order: both files exist; ``model.json`` is a JSON object with every required key of the
    right type; ``model.onnx`` hashes to ``onnx_sha256``; the names, dims, output shapes and training-input
    statistics agree with each other; the directory is named after ``version`` and its parent after
    ``name``. The ONNX graph itself is checked when it is loaded (``service._runtime.load_model``).

    Raises
    ------
    InvalidVersionError
        With a reason naming the offending file (or directory) and what was expected.
    """
    path = Path(path)
    metadata_path = path / METADATA_FILE
    model_path = path / MODEL_FILE
    if not path.is_dir():
        raise InvalidVersionError(
            f"{path}: not a directory; a model version is a directory holding "
            f"{MODEL_FILE} and {METADATA_FILE}"
        )
    metadata = _load_json(metadata_path)
    if not model_path.is_file():
        raise InvalidVersionError(
            f"{model_path}: missing; every version directory needs {MODEL_FILE} next to {METADATA_FILE}"
        )
    fields = _Fields(metadata, metadata_path)

    name = fields.string("name")
    version = fields.integer("version", minimum=1)
    input_names = fields.names("input_names")
    target_names = fields.names("target_names")
    in_dim = fields.integer("in_dim", minimum=1)
    out_dim = fields.integer("out_dim", minimum=1)
    fields.string("method")
    fields.string("parameterisation")
    fields.integer("opset", minimum=1)
    sha256 = fields.string("onnx_sha256")
    if not SHA256_PATTERN.fullmatch(sha256):
        raise InvalidVersionError(
            f"{metadata_path}: 'onnx_sha256' must be 64 lower-case hex digits, got {sha256!r}"
        )
    outputs = fields.mapping("outputs")
    fields.string("created")
    fields.string("covserve_version")
    data = fields.mapping("data")
    test_metrics = fields.mapping("test_metrics")
    training_inputs = fields.mapping("training_inputs")

    digest = _sha256_file(model_path)
    if digest != sha256:
        raise InvalidVersionError(
            f"{model_path}: corrupt or replaced, its sha256 {digest} differs from the 'onnx_sha256' "
            f"{sha256} recorded in {metadata_path}"
        )

    if len(input_names) != in_dim:
        raise InvalidVersionError(
            f"{metadata_path}: 'input_names' has {len(input_names)} names but 'in_dim' is {in_dim}"
        )
    if len(target_names) != out_dim:
        raise InvalidVersionError(
            f"{metadata_path}: 'target_names' has {len(target_names)} names but 'out_dim' is {out_dim}"
        )
    _check_outputs(outputs, out_dim, metadata_path)
    _check_data(data, metadata_path)
    for key, value in test_metrics.items():
        if not _is_number(value):
            raise InvalidVersionError(
                f"{metadata_path}: 'test_metrics'[{key!r}] must be a finite number, got {value!r}"
            )
    training_mean, training_covariance = _training_statistics(training_inputs, in_dim, metadata_path)
    training_precision = _precision(training_covariance, metadata_path)

    if path.name != str(version):
        raise InvalidVersionError(
            f"{path}: the directory name {path.name!r} differs from 'version' {version} in {metadata_path}"
        )
    if path.parent.name != name:
        raise InvalidVersionError(
            f"{path}: the model directory name {path.parent.name!r} differs from 'name' {name!r} in "
            f"{metadata_path}"
        )
    return ModelVersion(
        name=name,
        version=version,
        path=path,
        metadata=metadata,
        input_names=input_names,
        target_names=target_names,
        in_dim=in_dim,
        out_dim=out_dim,
        training_mean=training_mean,
        training_precision=training_precision,
    )


def _load_json(metadata_path: Path) -> dict[str, Any]:
    try:
        text = metadata_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidVersionError(
            f"{metadata_path}: missing; every version directory needs {METADATA_FILE} next to {MODEL_FILE}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidVersionError(
            f"{metadata_path}: cannot read the model metadata: {_strerror(exc)}"
        ) from None
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidVersionError(f"{metadata_path}: not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise InvalidVersionError(
            f"{metadata_path}: expected a JSON object, got a JSON {type(metadata).__name__}"
        )
    return metadata


class _Fields:
    """Typed access to the required keys of ``model.json``; every failure names the file and the key."""

    def __init__(self, metadata: Mapping[str, Any], metadata_path: Path) -> None:
        self._metadata = metadata
        self._path = metadata_path

    def _get(self, key: str) -> Any:
        if key not in self._metadata:
            raise InvalidVersionError(f"{self._path}: required key {key!r} is missing")
        return self._metadata[key]

    def _wrong(self, key: str, expected: str, value: Any) -> InvalidVersionError:
        return InvalidVersionError(f"{self._path}: {key!r} must be {expected}, got {_describe(value)}")

    def string(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._wrong(key, "a non-empty string", value)
        return value

    def integer(self, key: str, minimum: int) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self._wrong(key, f"an integer >= {minimum}", value)
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._wrong(key, "a JSON object", value)
        return value

    def names(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self._wrong(key, "a list of non-empty strings", value)
        duplicates = sorted({item for item in value if value.count(item) > 1})
        if duplicates:
            raise InvalidVersionError(f"{self._path}: {key!r} repeats the names {duplicates}")
        return tuple(value)


def _check_outputs(outputs: Mapping[str, Any], out_dim: int, metadata_path: Path) -> None:
    expected = {
        "mean": [-1, out_dim],
        "covariance": [-1, out_dim, out_dim],
        "scale": [-1, out_dim, out_dim],
    }
    if sorted(outputs) != sorted(OUTPUT_NAMES):
        raise InvalidVersionError(
            f"{metadata_path}: 'outputs' must describe exactly {list(OUTPUT_NAMES)}, got {sorted(outputs)}"
        )
    for key, shape in expected.items():
        if outputs[key] != shape:
            raise InvalidVersionError(
                f"{metadata_path}: 'outputs'[{key!r}] is {outputs[key]!r}, expected {shape} for "
                f"'out_dim' {out_dim}"
            )


def _check_data(data: Mapping[str, Any], metadata_path: Path) -> None:
    description = data.get("description")
    if not isinstance(description, str):
        raise InvalidVersionError(
            f"{metadata_path}: 'data' must hold a 'description' string, got {_describe(description)}"
        )
    split_sizes = data.get("split_sizes")
    if not isinstance(split_sizes, dict) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in split_sizes.values()
    ):
        raise InvalidVersionError(
            f"{metadata_path}: 'data'['split_sizes'] must map split names to non-negative integers, "
            f"got {_describe(split_sizes)}"
        )


def _training_statistics(
    training_inputs: Mapping[str, Any], in_dim: int, metadata_path: Path
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``training_inputs.mean`` ``(M,)`` and the symmetrised ``training_inputs.covariance`` ``(M, M)``."""
    arrays: list[NDArray[np.float64]] = []
    for key, shape in (("mean", (in_dim,)), ("covariance", (in_dim, in_dim))):
        if key not in training_inputs:
            raise InvalidVersionError(f"{metadata_path}: required key 'training_inputs'[{key!r}] is missing")
        try:
            array = np.array(training_inputs[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidVersionError(
                f"{metadata_path}: 'training_inputs'[{key!r}] must be a numeric array of shape {shape}, "
                f"got {_describe(training_inputs[key])}"
            ) from None
        if array.shape != shape:
            raise InvalidVersionError(
                f"{metadata_path}: 'training_inputs'[{key!r}] has shape {array.shape}, expected {shape} "
                f"for 'in_dim' {in_dim}"
            )
        if not np.all(np.isfinite(array)):
            raise InvalidVersionError(f"{metadata_path}: 'training_inputs'[{key!r}] is not finite")
        arrays.append(array)
    mean, covariance = arrays
    magnitude = float(np.max(np.abs(covariance)))
    asymmetry = float(np.max(np.abs(covariance - covariance.T)))
    if asymmetry > COVARIANCE_SYMMETRY_RTOL * magnitude:
        raise InvalidVersionError(
            f"{metadata_path}: 'training_inputs'['covariance'] is not symmetric "
            f"(max |C − Cᵀ| / max |C| = {asymmetry / magnitude:.3g})"
        )
    symmetric: NDArray[np.float64] = 0.5 * (covariance + covariance.T)
    return mean, symmetric


def _precision(covariance: NDArray[np.float64], metadata_path: Path) -> NDArray[np.float64]:
    """The inverse ``(M, M)`` of a symmetric covariance, with a ridge when it is (nearly) singular.

    ``C = V diag(λ) Vᵀ`` gives ``C⁻¹ = V diag(1 / λ) Vᵀ``; when ``λ_min < PRECISION_RIDGE_RTOL · λ_max``
    every eigenvalue gets ``+ PRECISION_RIDGE_RTOL · λ_max`` first (``ZERO_COVARIANCE_RIDGE`` for ``C = 0``).
    """
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
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


# -------------------------------------------------------------------------------------------------- utils


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(_HASH_BLOCK_BYTES), b""):
                digest.update(block)
    except OSError as exc:
        raise InvalidVersionError(f"{path}: cannot read the model: {_strerror(exc)}") from None
    return digest.hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _describe(value: Any) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}" if value is not None else "null"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _strerror(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

"""The model-repository contract: what ``covserve.training`` writes and ``covserve.service`` reads.

A published model is one directory ``<repository>/<name>/<version>/`` holding exactly two files:

``model.onnx`` (:data:`MODEL_FILE`)
    The raw-unit graph ``x (B, M) float32 → mean (B, D), covariance (B, D, D), scale (B, D, D)`` with
    ``scale · scaleᵀ = covariance`` and a symbolic batch axis (:data:`INPUT_NAME`, :data:`OUTPUT_NAMES`).
``model.json`` (:data:`METADATA_FILE`)
    :class:`ModelMetadata`, schema :data:`SCHEMA_VERSION`, including the sha256 of ``model.onnx``.

Versions are the directories named by a positive decimal integer; every other name (an export in
progress, ``.tmp-*``) is ignored by readers. This module owns those names, the ``model.json`` schema, the
sha256, the graph-interface check and the ONNX Runtime session options; nothing else spells them. It
imports neither torch nor onnx (ONNX Runtime only inside :func:`session_options`), so the service image
can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = [
    "INPUT_NAME",
    "METADATA_FILE",
    "MODEL_FILE",
    "OUTPUT_NAMES",
    "OUTPUT_SYMMETRY_RTOL",
    "SCHEMA_VERSION",
    "TEMPORARY_PREFIX",
    "TRAINING_COVARIANCE_SYMMETRY_RTOL",
    "ContractError",
    "DataSummary",
    "ModelMetadata",
    "NeighbourSearch",
    "TrainingInputs",
    "check_interface",
    "is_version_name",
    "latest_published",
    "metadata_bytes",
    "output_shapes",
    "read_metadata",
    "session_options",
    "sha256_file",
]

MODEL_FILE: Final = "model.onnx"
"""The ONNX graph inside a version directory."""

METADATA_FILE: Final = "model.json"
"""The metadata inside a version directory."""

TEMPORARY_PREFIX: Final = ".tmp-"
"""Prefix of in-progress (or crashed) export directories, which readers ignore."""

INPUT_NAME: Final = "x"
"""The graph's one input, raw-unit features ``(B, M)`` float32."""

OUTPUT_NAMES: Final[tuple[str, str, str]] = ("mean", "covariance", "scale")
"""The graph's outputs, in order: ``(B, D)``, ``(B, D, D)``, ``(B, D, D)``, all float32, raw units."""

SCHEMA_VERSION: Final = 1
"""The ``model.json`` schema this covserve writes and reads. A file without ``schema_version`` was written
before the field existed and has this same layout."""

OUTPUT_SYMMETRY_RTOL: Final = 1e-6
"""Largest accepted ``max |Σ − Σᵀ| / max |Σ|`` of a covariance the graph returns (it symmetrises exactly,
so only float32 rounding remains)."""

TRAINING_COVARIANCE_SYMMETRY_RTOL: Final = 1e-8
"""Largest accepted ``max |C − Cᵀ| / max |C|`` of the training-input covariance in ``model.json`` (written
from float64)."""

_HASH_BLOCK_BYTES: Final = 1 << 20
_TENSOR_FLOAT: Final = "tensor(float)"

NonEmptyString = Annotated[str, Field(min_length=1)]


class ContractError(Exception):
    """A version directory breaks the contract; ``reason`` names the file and what was expected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Schema(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, allow_inf_nan=False, extra="ignore")


class DataSummary(_Schema):
    """What the model was trained on: a one-line description and the row count of each split."""

    description: str
    split_sizes: dict[str, Annotated[int, Field(ge=0)]]


class TrainingInputs(_Schema):
    """Raw-unit statistics of the training inputs: ``mean`` ``(M,)`` and ``covariance`` ``(M, M)``."""

    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]

    def mean_array(self) -> NDArray[np.float64]:
        """``mean`` as a float64 array ``(M,)``."""
        return np.asarray(self.mean, dtype=np.float64)

    def covariance_array(self) -> NDArray[np.float64]:
        """``covariance`` as a float64 array ``(M, M)``."""
        return np.asarray(self.covariance, dtype=np.float64)


class NeighbourSearch(_Schema):
    """How the pseudo-labels' neighbours were found: the ``index`` used (``requested`` on the command line,
    chosen for ``reason``), its wall ``seconds``, and for an approximate index the ``recall`` measured on
    ``recall_rows`` sample rows against exact neighbours (``None`` for an exact index)."""

    requested: NonEmptyString
    index: NonEmptyString
    reason: str
    seconds: Annotated[float, Field(ge=0)]
    recall: Annotated[float, Field(ge=0, le=1)] | None = None
    recall_rows: Annotated[int, Field(ge=0)] = 0
    parameters: dict[str, int | float | str] = Field(default_factory=dict)


class ModelMetadata(_Schema):
    """``model.json``: one published version's names, dims, provenance and training-input statistics.

    Every field is checked on read, and the fields are checked against each other (name counts against
    dims, output shapes, statistic shapes); :func:`read_metadata` adds the sha256 and the directory names.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    name: NonEmptyString
    version: Annotated[int, Field(ge=1)]
    created: NonEmptyString
    input_names: tuple[NonEmptyString, ...]
    target_names: tuple[NonEmptyString, ...]
    in_dim: Annotated[int, Field(ge=1)]
    out_dim: Annotated[int, Field(ge=1)]
    method: NonEmptyString
    hybrid_epochs: Annotated[int, Field(ge=0)] = 0
    labels: str | None = None
    neighbour_search: NeighbourSearch | None = None
    parameterisation: NonEmptyString
    opset: Annotated[int, Field(ge=1)]
    onnx_sha256: str
    outputs: dict[str, list[int]]
    data: DataSummary
    test_metrics: dict[str, float]
    training_inputs: TrainingInputs
    covserve_version: NonEmptyString

    @field_validator("onnx_sha256")
    @classmethod
    def _hex_digest(cls, digest: str) -> str:
        if len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise ValueError(f"must be 64 lower-case hex digits (a sha256), got {digest!r}")
        return digest

    @field_validator("input_names", "target_names")
    @classmethod
    def _distinct(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"repeats the names {repeated}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        if len(self.input_names) != self.in_dim:
            raise ValueError(f"'input_names' has {len(self.input_names)} names but 'in_dim' is {self.in_dim}")
        if len(self.target_names) != self.out_dim:
            raise ValueError(
                f"'target_names' has {len(self.target_names)} names but 'out_dim' is {self.out_dim}"
            )
        expected = output_shapes(self.out_dim)
        if sorted(self.outputs) != sorted(expected):
            raise ValueError(
                f"'outputs' must describe exactly {list(OUTPUT_NAMES)}, got {sorted(self.outputs)}"
            )
        for key, shape in expected.items():
            if self.outputs[key] != shape:
                raise ValueError(
                    f"'outputs'['{key}'] is {self.outputs[key]}, expected {shape} for 'out_dim' "
                    f"{self.out_dim}"
                )
        self._check_training_inputs()
        return self

    def _check_training_inputs(self) -> None:
        dim = self.in_dim
        mean, covariance = self.training_inputs.mean, self.training_inputs.covariance
        if len(mean) != dim:
            raise ValueError(
                f"'training_inputs'['mean'] has shape ({len(mean)},), expected ({dim},) for 'in_dim' {dim}"
            )
        lengths = {len(row) for row in covariance}
        if len(lengths) > 1:
            raise ValueError(
                f"'training_inputs'['covariance'] must be a numeric array of shape ({dim}, {dim}), "
                "got ragged rows"
            )
        shape = (len(covariance), *lengths)
        if shape != (dim, dim):
            raise ValueError(
                f"'training_inputs'['covariance'] has shape {shape}, expected ({dim}, {dim}) "
                f"for 'in_dim' {dim}"
            )
        matrix = self.training_inputs.covariance_array()
        magnitude = float(np.max(np.abs(matrix)))
        asymmetry = float(np.max(np.abs(matrix - matrix.T)))
        if asymmetry > TRAINING_COVARIANCE_SYMMETRY_RTOL * magnitude:
            raise ValueError(
                f"'training_inputs'['covariance'] is not symmetric "
                f"(max |C − Cᵀ| / max |C| = {asymmetry / magnitude:.3g})"
            )


def output_shapes(out_dim: int) -> dict[str, list[int]]:
    """The outputs' shapes as ``model.json`` records them, ``-1`` for the batch axis."""
    return {"mean": [-1, out_dim], "covariance": [-1, out_dim, out_dim], "scale": [-1, out_dim, out_dim]}


def is_version_name(name: str) -> bool:
    """Whether a directory name is a version (a decimal integer); readers ignore every other name."""
    return name.isascii() and name.isdigit()


def latest_published(model_dir: Path) -> ModelMetadata | None:
    """``model.json`` of the highest version in ``model_dir`` meeting the contract; ``None`` if none does
    (or ``model_dir`` does not exist)."""
    try:
        names = [name for name in os.listdir(model_dir) if is_version_name(name)]
    except OSError:
        return None
    for name in sorted(names, key=int, reverse=True):
        try:
            return read_metadata(model_dir / name)
        except ContractError:
            continue
    return None


def sha256_file(path: Path) -> str:
    """The lower-case hex sha256 of a file, read in 1 MiB blocks. Raises :class:`ContractError`."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(_HASH_BLOCK_BYTES), b""):
                digest.update(block)
    except OSError as error:
        raise ContractError(f"{path}: cannot read the model: {error.strerror or error}") from None
    return digest.hexdigest()


def metadata_bytes(metadata: ModelMetadata) -> bytes:
    """``model.json`` as written: sorted keys, indent 2, a final newline, no NaN."""
    text = json.dumps(metadata.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False)
    return (text + "\n").encode("utf-8")


def read_metadata(version_dir: Path, *, check_location: bool = True) -> ModelMetadata:
    """Validate ``version_dir`` against the contract and return its metadata.

    Checks, in order: both files exist; ``model.json`` is JSON of schema :data:`SCHEMA_VERSION` (every
    field typed, the fields consistent); ``model.onnx`` hashes to ``onnx_sha256``; with
    ``check_location`` (a version inside a repository), the directory is named after ``version`` and its
    parent after ``name``. The graph itself is checked when a session is made (:func:`check_interface`).

    Raises
    ------
    ContractError
        With a reason naming the offending file (or directory) and what was expected.
    """
    metadata_path = version_dir / METADATA_FILE
    model_path = version_dir / MODEL_FILE
    if not version_dir.is_dir():
        raise ContractError(
            f"{version_dir}: not a directory; a model version is a directory holding {MODEL_FILE} and "
            f"{METADATA_FILE}"
        )
    try:
        text = metadata_path.read_bytes()
    except FileNotFoundError:
        raise ContractError(
            f"{metadata_path}: missing; every version directory needs {METADATA_FILE} next to {MODEL_FILE}"
        ) from None
    except OSError as error:
        raise ContractError(f"{metadata_path}: cannot read the model metadata: {error.strerror}") from None
    if not model_path.is_file():
        raise ContractError(
            f"{model_path}: missing; every version directory needs {MODEL_FILE} next to {METADATA_FILE}"
        )
    metadata = _parse(text, metadata_path)
    digest = sha256_file(model_path)
    if digest != metadata.onnx_sha256:
        raise ContractError(
            f"{model_path}: corrupt or replaced, its sha256 {digest} differs from the 'onnx_sha256' "
            f"{metadata.onnx_sha256} recorded in {metadata_path}"
        )
    if not check_location:
        return metadata
    if version_dir.name != str(metadata.version):
        raise ContractError(
            f"{version_dir}: the directory name {version_dir.name!r} differs from 'version' "
            f"{metadata.version} in {metadata_path}"
        )
    if version_dir.parent.name != metadata.name:
        raise ContractError(
            f"{version_dir}: the model directory name {version_dir.parent.name!r} differs from 'name' "
            f"{metadata.name!r} in {metadata_path}"
        )
    return metadata


def _parse(text: bytes, metadata_path: Path) -> ModelMetadata:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ContractError(f"{metadata_path}: not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ContractError(f"{metadata_path}: expected a JSON object, got a JSON {type(document).__name__}")
    schema = document.get("schema_version", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ContractError(
            f"{metadata_path}: 'schema_version' {schema!r} is not {SCHEMA_VERSION}, the schema this covserve "
            "reads; serve it with the covserve that exported it, or export the model again"
        )
    try:
        return ModelMetadata.model_validate_json(text)
    except ValidationError as error:
        raise ContractError(f"{metadata_path}: {_first_problem(error)}") from None


def _first_problem(error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    location = "".join(
        f"'{part}'" if index == 0 else f"[{part!r}]" for index, part in enumerate(problem["loc"])
    )
    message = str(problem["msg"]).removeprefix("Value error, ")
    if problem["type"] == "missing":
        return f"required key {location} is missing"
    if problem["type"] in ("value_error", "assertion_error") and not location:
        return message
    value = problem.get("input")
    shown = json.dumps(value) if _is_json(value) else repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"{location}: {message}" + ("" if problem["type"] == "value_error" else f", got {shown}")


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def check_interface(session: ort.InferenceSession, source: Path, in_dim: int, out_dim: int) -> None:
    """Raise :class:`ContractError` unless the session's graph is ``x (B, M) → mean, covariance, scale``.

    Every tensor must be float32 with a symbolic batch axis; the input's feature axis must equal
    ``in_dim``, and the outputs' feature axes ``out_dim`` where the graph states them (a symbolic output
    axis is checked on concrete outputs). ``source`` names the graph in messages.
    """
    inputs = list(session.get_inputs())
    outputs = list(session.get_outputs())
    input_names = [node.name for node in inputs]
    output_names = [node.name for node in outputs]
    if input_names != [INPUT_NAME] or sorted(output_names) != sorted(OUTPUT_NAMES):
        raise ContractError(
            f"{source}: the graph has inputs {input_names} and outputs {output_names}, expected "
            f"[{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}"
        )
    expected = {INPUT_NAME: [in_dim]} | {name: shape[1:] for name, shape in output_shapes(out_dim).items()}
    for node in [*inputs, *outputs]:
        name = str(node.name)
        shape = list(node.shape)
        want = expected[name]
        if node.type != _TENSOR_FLOAT:
            raise ContractError(
                f"{source}: {name!r} has type {node.type}, expected {_TENSOR_FLOAT} (float32)"
            )
        wanted_text = f"[batch, {', '.join(str(dim) for dim in want)}]"
        if len(shape) != 1 + len(want) or isinstance(shape[0], int):
            raise ContractError(
                f"{source}: {name!r} has shape {shape}, expected {wanted_text} with a symbolic batch axis"
            )
        for axis, (dim, wanted) in enumerate(zip(shape[1:], want, strict=True), start=1):
            symbolic = not isinstance(dim, int)
            if (name == INPUT_NAME and symbolic) or (not symbolic and dim != wanted):
                raise ContractError(
                    f"{source}: {name!r} has shape {shape}, expected {wanted_text}: axis {axis} disagrees "
                    f"with 'in_dim' {in_dim} / 'out_dim' {out_dim}"
                )


def session_options(intra_op_threads: int, log_severity: int) -> ort.SessionOptions:
    """ONNX Runtime options for a covserve graph: ``intra_op_threads`` (``>= 1``) set explicitly (the
    default counts the host's cores, not a container's quota), sequential execution, every graph
    optimisation, and log lines from ``log_severity`` up (0 verbose … 4 fatal)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = log_severity
    return options

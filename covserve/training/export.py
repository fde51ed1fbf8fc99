"""Publish a trained :class:`~training.networks.CovarianceModel` into the model repository.

What a published version holds (``model.onnx`` and ``model.json``, their names, tensors and schema) is
the contract of :mod:`covserve.repository`; this module writes it, with the data's standardisation baked
into the graph. Versions are the positive integers ``1, 2, …``; a new export takes the next integer after
the largest numeric directory already there.

Atomic publication
------------------
Both files are written into a temporary directory ``<repository>/<name>/.tmp-<random>`` created next to
the version directories, flushed to disk with ``fsync``, and the directory is then ``os.rename``-d to
``<repository>/<name>/<version>`` (one atomic step on POSIX, same filesystem). A reader therefore never
sees a partial version: a numeric directory either does not exist or holds both complete files. If
another exporter published the same version in the meantime the rename fails and the export retries
with the next version. Readers must ignore every directory whose name is not a decimal integer: a
process killed mid-export (SIGKILL, power loss) leaves at most one ``.tmp-*`` directory behind, which is
never renamed and can be deleted by hand once no export is running.

Nothing is published unless the exported graph passes verification first: ``onnx.checker``, ONNX
Runtime against torch on the caller's verification inputs (relative error at most
:data:`PARITY_RTOL`), batch sizes ``N`` and ``1``, and every covariance symmetric positive definite
with ``scale · scaleᵀ = covariance``. A failure raises :class:`ExportError` and leaves the repository
untouched.

``torch`` is imported inside :func:`export_model` only.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from covserve import __version__
from covserve.repository import (
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILE,
    OUTPUT_NAMES,
    OUTPUT_SYMMETRY_RTOL,
    TEMPORARY_PREFIX,
    ContractError,
    DataSummary,
    ModelMetadata,
    NeighbourSearch,
    TrainingInputs,
    check_interface,
    is_version_name,
    latest_published,
    metadata_bytes,
    output_shapes,
    read_metadata,
    session_options,
)
from covserve.training.errors import ExportError, UsageError

if TYPE_CHECKING:
    import onnx_ir as ir

    from covserve.training.networks import CovarianceModel

__all__ = [
    "OPSET",
    "PARITY_RTOL",
    "ExportError",
    "ModelCard",
    "check_interface_unchanged",
    "export_model",
    "read_published",
]

OPSET = 18
"""ONNX opset requested from the exporter; ``model.json`` records the opset actually saved."""

PARITY_RTOL = 1e-4
"""Largest accepted ``max |onnx − torch| / max |torch|`` of each output on the verification inputs."""

FACTOR_RTOL = 1e-4
"""Largest accepted ``max |S Sᵀ − Σ| / max |Σ|`` per sample (float32 products, checked in float64)."""

MAX_PUBLISH_ATTEMPTS = 100
"""Versions tried before giving up when concurrent exporters keep taking the next one."""

_ORT_LOG_SEVERITY = 3
"""ONNX Runtime log lines from errors up during verification (its warnings are about graph fusions)."""

_EXAMPLE_BATCH = 2
"""Rows of the example input traced by the exporter (``1`` would specialise the batch axis)."""

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TIC_MESSAGE = (
    "--method nll-tic: the tic covariance cannot be exported to ONNX (it is built from input derivatives "
    "of the mean network, which have no ONNX form); train with an exportable method such as "
    "--method w2-bound or --method nll to publish a model"
)


@dataclass(frozen=True)
class ModelCard:
    """Everything ``model.json`` holds besides what :func:`export_model` computes itself.

    ``training_input_mean`` ``(M,)`` and ``training_input_covariance`` ``(M, M)`` are in raw input units;
    the service uses them for its Mahalanobis out-of-distribution score.
    """

    name: str
    method: str
    input_names: tuple[str, ...]
    target_names: tuple[str, ...]
    data_description: str
    split_sizes: dict[str, int]
    test_metrics: dict[str, float]
    training_input_mean: NDArray[np.float64]
    training_input_covariance: NDArray[np.float64]
    labels: str | None = None
    """The pseudo-label scheme the covariance was trained on (``None``: the method uses no labels)."""
    hybrid_epochs: int = 0
    """Epochs of the W2 bound before ``method`` (the hybrid); 0 when ``method`` trained alone."""
    neighbour_search: dict[str, Any] | None = None
    """How the pseudo-labels' neighbours were found (``SearchReport.as_dict``); ``None`` without labels."""


def export_model(
    model: CovarianceModel,
    card: ModelCard,
    repository: Path,
    verification_inputs: NDArray[np.floating[Any]],
) -> Path:
    """Export ``model`` to ONNX, verify it and publish it as the next version of ``card.name``.

    Parameters
    ----------
    model
        A trained model (any device, dtype or mode; it is copied, never modified). Its ``tic`` kind cannot
        be exported.
    card
        Names, method, data description, split sizes, test metrics and training-input statistics.
    repository
        Root of the model repository; ``repository/<card.name>/`` is created if needed.
    verification_inputs
        Raw-unit inputs ``(N, M)``, ``N >= 1``, on which ONNX Runtime must reproduce torch.

    Returns
    -------
    Path
        The published version directory ``repository/<card.name>/<version>``.

    ``model.json`` is :class:`covserve.repository.ModelMetadata` (sorted keys, indent 2).

    Raises
    ------
    UsageError
        The model is a ``tic`` model, the model name is not a plain directory name, or the model
        directory cannot be created.
    ValueError
        The card disagrees with the model (name counts, statistic shapes, non-finite metrics).
    ExportError
        The verification inputs are unusable or the exported graph failed a check.
    """
    import torch

    from covserve.training.covariance import CovarianceKind

    if model.kind is CovarianceKind.TIC:
        raise UsageError(_TIC_MESSAGE)
    _check_name(card.name)
    in_dim = int(model.input_mean.shape[0])
    out_dim = int(model.target_mean.shape[0])
    _check_card(card, in_dim, out_dim)
    inputs = _verification_array(verification_inputs, in_dim)

    reference = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    reference.requires_grad_(False)
    onnx_bytes = _export_onnx(reference, in_dim)
    proto = onnx.load_from_string(onnx_bytes)
    _verify(proto, onnx_bytes, reference, inputs, out_dim)

    metadata = ModelMetadata(
        name=card.name,
        version=1,  # replaced by the version the publication takes
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        input_names=tuple(card.input_names),
        target_names=tuple(card.target_names),
        in_dim=in_dim,
        out_dim=out_dim,
        method=card.method,
        hybrid_epochs=card.hybrid_epochs,
        labels=card.labels,
        neighbour_search=None
        if card.neighbour_search is None
        else NeighbourSearch.model_validate(card.neighbour_search),
        parameterisation=model.kind.value,
        opset=_default_opset(proto),
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        outputs=output_shapes(out_dim),
        data=DataSummary(
            description=card.data_description,
            split_sizes={key: int(value) for key, value in card.split_sizes.items()},
        ),
        test_metrics={key: float(value) for key, value in card.test_metrics.items()},
        training_inputs=TrainingInputs(
            mean=tuple(np.asarray(card.training_input_mean, dtype=np.float64).tolist()),
            covariance=tuple(
                tuple(row) for row in np.asarray(card.training_input_covariance, dtype=np.float64).tolist()
            ),
        ),
        covserve_version=__version__,
    )
    return _publish(repository / card.name, onnx_bytes, metadata)


def read_published(version_dir: Path) -> ModelMetadata:
    """``model.json`` of a published version (anywhere on disk), after the contract's checks and the sha256.

    Raises :class:`UsageError` naming the file when the version breaks the contract.
    """
    try:
        return read_metadata(version_dir, check_location=False)
    except ContractError as error:
        raise UsageError(error.reason) from None


def check_interface_unchanged(
    repository: Path, name: str, input_names: Sequence[str], target_names: Sequence[str]
) -> None:
    """Refuse a new version of ``name`` whose inputs or targets (names and order) differ from its latest
    published version's: clients of ``name`` would get answers for other columns without a word.

    Raises :class:`UsageError` naming both interfaces, the other name to choose and
    ``--allow-schema-change``.
    """
    latest = latest_published(repository / name)
    if latest is None:
        return
    differences = [
        f"{kind} {list(before)} → {list(now)}"
        for kind, before, now in (
            ("inputs", latest.input_names, tuple(input_names)),
            ("targets", latest.target_names, tuple(target_names)),
        )
        if tuple(before) != now
    ]
    if differences:
        raise UsageError(
            f"{repository / name / str(latest.version)} has other columns than this run "
            f"({'; '.join(differences)}): choose another --name, or pass --allow-schema-change to publish "
            f"it as the next version of {name!r} anyway"
        )


# ----------------------------------------------------------------------------------------------- checks


def _check_name(name: str) -> None:
    if not _NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"--name {name!r}: a model name names the directory <repository>/<name>, so it must start "
            "with a letter or digit and contain only letters, digits, '.', '_' and '-'"
        )


def _check_card(card: ModelCard, in_dim: int, out_dim: int) -> None:
    if len(card.input_names) != in_dim:
        raise ValueError(
            f"card.input_names: expected {in_dim} names (model in_dim), got {len(card.input_names)}"
        )
    if len(card.target_names) != out_dim:
        raise ValueError(
            f"card.target_names: expected {out_dim} names (model out_dim), got {len(card.target_names)}"
        )
    mean = np.asarray(card.training_input_mean, dtype=np.float64)
    covariance = np.asarray(card.training_input_covariance, dtype=np.float64)
    if mean.shape != (in_dim,) or not np.all(np.isfinite(mean)):
        raise ValueError(f"card.training_input_mean: expected finite shape ({in_dim},), got {mean.shape}")
    if covariance.shape != (in_dim, in_dim) or not np.all(np.isfinite(covariance)):
        raise ValueError(
            f"card.training_input_covariance: expected finite shape ({in_dim}, {in_dim}), "
            f"got {covariance.shape}"
        )
    for key, value in card.test_metrics.items():
        if not np.isfinite(value):
            raise ValueError(
                f"card.test_metrics[{key!r}]: expected a finite number (JSON has no NaN), got {value}"
            )


def _verification_array(values: NDArray[np.floating[Any]], in_dim: int) -> NDArray[np.float32]:
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != in_dim:
        raise ExportError(
            f"verification_inputs: expected shape (N, {in_dim}) with N >= 1 (the model's in_dim), "
            f"got {array.shape}; nothing was published"
        )
    converted = array.astype(np.float32)
    bad_rows = np.flatnonzero(~np.all(np.isfinite(converted), axis=1))
    if bad_rows.size:
        raise ExportError(
            f"verification_inputs: row {int(bad_rows[0])} is not finite in float32 "
            f"({bad_rows.size} such rows); nothing was published"
        )
    return np.ascontiguousarray(converted)


# ---------------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Swallow the exporter's progress prints, torch-internal warnings and log lines, for this call only."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_onnx(reference: CovarianceModel, in_dim: int) -> bytes:
    """Serialised ONNX graph of ``reference`` (CPU, float32, eval) with a dynamic batch axis."""
    import onnx_ir as ir
    import torch

    example = torch.zeros(_EXAMPLE_BATCH, in_dim, dtype=torch.float32)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                reference,
                (example,),
                None,
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types; keep the cause chained
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    _free_interface_names(program.model.graph)
    proto = ir.to_proto(program.model)
    return bytes(proto.SerializeToString())


def _free_interface_names(graph: ir.Graph) -> None:
    """Rename internal values that share a name with a graph input or output.

    The dynamo exporter names values after FX nodes and applies ``output_names`` without checking for
    clashes, so the ``aten.mean`` in the ridge also becomes ``"mean"`` and the graph breaks SSA form
    (``onnx.checker``: "'mean' has been used as output names multiple times").
    """
    import onnx_ir as ir

    interface = [*graph.inputs, *graph.outputs]
    interface_ids = {id(value) for value in interface}
    reserved = {value.name for value in interface}
    values = [value for node in ir.traversal.RecursiveGraphIterator(graph) for value in node.outputs]
    taken = {value.name for value in values} | set(graph.initializers) | reserved
    for value in values:
        if id(value) in interface_ids or value.name not in reserved:
            continue
        counter = 1
        while f"{value.name}_{counter}" in taken:
            counter += 1
        value.name = f"{value.name}_{counter}"
        taken.add(value.name)


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("the exported model imports no default-domain ONNX opset")


# ------------------------------------------------------------------------------------------ verification


def _verify(
    proto: onnx.ModelProto,
    onnx_bytes: bytes,
    reference: CovarianceModel,
    inputs: NDArray[np.float32],
    out_dim: int,
) -> None:
    """Raise :class:`ExportError` unless the serialised graph is valid and reproduces ``reference``."""
    import torch

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported model: {exc}") from exc
    try:
        session = _session(onnx_bytes)
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise ExportError(f"ONNX Runtime cannot load the exported model: {exc}") from exc
    _check_interface(session, inputs.shape[1], out_dim)

    # Batch N, and batch 1 on its own (catches a batch axis specialised during tracing).
    for batch in (inputs, inputs[:1]):
        with torch.no_grad():
            expected = [tensor.numpy() for tensor in reference(torch.from_numpy(batch))]
        try:
            produced = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        except Exception as exc:
            raise ExportError(f"ONNX Runtime failed on a batch of {len(batch)} rows: {exc}") from exc
        shapes = ((len(batch), out_dim), (len(batch), out_dim, out_dim), (len(batch), out_dim, out_dim))
        for name, shape, want, got in zip(OUTPUT_NAMES, shapes, expected, produced, strict=True):
            _check_parity(name, shape, np.asarray(want), np.asarray(got), len(batch))
        _check_covariance(np.asarray(produced[1], np.float64), np.asarray(produced[2], np.float64))


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = session_options(os.cpu_count() or 1, _ORT_LOG_SEVERITY)
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _check_interface(session: ort.InferenceSession, in_dim: int, out_dim: int) -> None:
    try:
        check_interface(session, Path(MODEL_FILE), in_dim, out_dim)
    except ContractError as error:
        raise ExportError(f"the exported graph breaks the repository contract: {error.reason}") from None


def _check_parity(
    name: str, shape: tuple[int, ...], expected: NDArray[Any], produced: NDArray[Any], batch: int
) -> None:
    if produced.shape != shape:
        raise ExportError(f"ONNX Runtime output {name!r} has shape {produced.shape}, expected {shape}")
    for source, values in (("torch", expected), ("ONNX Runtime", produced)):
        bad = np.flatnonzero(~np.all(np.isfinite(values.reshape(batch, -1)), axis=1))
        if bad.size:
            raise ExportError(
                f"{source} output {name!r} is not finite for verification row {int(bad[0])} "
                f"(batch of {batch}); nothing was published"
            )
    difference = np.abs(produced.astype(np.float64) - expected.astype(np.float64))
    scale = max(float(np.max(np.abs(expected))), float(np.finfo(np.float32).tiny))
    error = float(np.max(difference)) / scale
    if error > PARITY_RTOL:
        row = int(np.unravel_index(np.argmax(difference), difference.shape)[0])
        raise ExportError(
            f"ONNX Runtime output {name!r} differs from torch by relative error {error:.3g} > PARITY_RTOL "
            f"= {PARITY_RTOL:g} (largest at verification row {row}, batch of {batch})"
        )


def _check_covariance(covariance: NDArray[np.float64], scale: NDArray[np.float64]) -> None:
    magnitude = np.max(np.abs(covariance), axis=(-2, -1))
    asymmetry = np.max(np.abs(covariance - np.swapaxes(covariance, -1, -2)), axis=(-2, -1))
    bad = np.flatnonzero(~(asymmetry <= OUTPUT_SYMMETRY_RTOL * magnitude))
    if bad.size:
        row = int(bad[0])
        raise ExportError(
            f"ONNX Runtime covariance of verification row {row} is not symmetric: max |Σ − Σᵀ| / max |Σ| = "
            f"{asymmetry[row] / magnitude[row]:.3g} > {OUTPUT_SYMMETRY_RTOL:g}"
        )
    mismatch = np.max(np.abs(scale @ np.swapaxes(scale, -1, -2) - covariance), axis=(-2, -1))
    bad = np.flatnonzero(~(mismatch <= FACTOR_RTOL * magnitude))
    if bad.size:
        row = int(bad[0])
        raise ExportError(
            f"ONNX Runtime scale of verification row {row} does not factor its covariance: "
            f"max |S Sᵀ − Σ| / max |Σ| = {mismatch[row] / magnitude[row]:.3g} > {FACTOR_RTOL:g}"
        )
    try:
        np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        for row, matrix in enumerate(covariance):  # only to name the first failing row
            try:
                np.linalg.cholesky(matrix)
            except np.linalg.LinAlgError:
                raise ExportError(
                    f"ONNX Runtime covariance of verification row {row} is not positive definite "
                    "(float64 Cholesky fails); nothing was published"
                ) from None
        raise


# ------------------------------------------------------------------------------------------ publication


def _publish(model_dir: Path, onnx_bytes: bytes, metadata: ModelMetadata) -> Path:
    """Write both files into a temporary directory and rename it to the next free version."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{model_dir}: cannot create the model directory: {exc.strerror or exc}") from None
    # os.mkdir honours the umask (tempfile.mkdtemp would make the published directory owner-only).
    staging = model_dir / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _write_durably(staging / MODEL_FILE, onnx_bytes)
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            version = _next_version(model_dir)
            published = metadata.model_copy(update={"version": version})
            _write_durably(staging / METADATA_FILE, metadata_bytes(published))
            _fsync_directory(staging)
            target = model_dir / str(version)
            try:
                os.rename(staging, target)
            except OSError as exc:
                # POSIX rename replaces an *empty* directory but fails on a published (non-empty) one.
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            _fsync_directory(model_dir)
            return target
        raise ExportError(
            f"{model_dir}: gave up after {MAX_PUBLISH_ATTEMPTS} attempts, concurrent exports kept taking "
            "the next version"
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _next_version(model_dir: Path) -> int:
    # Every decimal name counts, whatever it is, so a rename never targets an existing entry.
    versions = [int(name) for name in os.listdir(model_dir) if is_version_name(name)]
    return max(versions, default=0) + 1


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

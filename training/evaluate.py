"""Re-check a published model from its ONNX graph alone (no torch, no weights file).

:func:`compute_metrics` is the one place that decides which metrics a report holds; the trainer reports
its test metrics through it too, so a model's ``model.json`` and a later :func:`evaluate_model` on the
same data agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from training import metrics
from training.errors import UsageError
from training.export import INPUT_NAME, MODEL_FILE, read_metadata

__all__ = ["PREDICT_CHUNK_ROWS", "Evaluation", "compute_metrics", "evaluate_model", "predict_onnx"]

PREDICT_CHUNK_ROWS = 4096
"""Rows per ONNX Runtime call in :func:`predict_onnx`: bounds memory at ``O(chunk · D²)``."""


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a published model on one data set (keys as :func:`compute_metrics` returns them)."""

    metrics: dict[str, float]


def compute_metrics(
    mean: ArrayLike,
    covariance: ArrayLike,
    targets: ArrayLike,
    *,
    true_mean: ArrayLike | None = None,
    true_covariance: ArrayLike | None = None,
) -> dict[str, float]:
    """The metrics of predictions ``mean`` ``(N, D)``, ``covariance`` ``(N, D, D)`` against ``targets``.

    Keys: ``mse`` (per dimension), ``nll`` (nats per sample), ``tac``, ``calibration_error`` (mean
    absolute coverage error over :data:`training.metrics.DEFAULT_LEVELS`), ``samples`` (``N``) and, when
    the true Gaussians are known (synthetic data; give both or neither), ``kl_to_truth`` (KL(true ‖
    predicted), nats) and ``w2_to_truth`` (squared 2-Wasserstein distance). All in target units; see
    :mod:`training.metrics`. Raises ``ValueError`` on inconsistent shapes or non-SPD covariances.
    """
    if (true_mean is None) != (true_covariance is None):
        raise ValueError("true_mean, true_covariance: give both (synthetic data) or neither")
    report = {
        "mse": metrics.mse(mean, targets),
        "nll": metrics.gaussian_nll(mean, covariance, targets),
        "tac": metrics.tac(mean, covariance, targets),
        "calibration_error": metrics.calibration(mean, covariance, targets).error,
        "samples": float(np.shape(targets)[0]),
    }
    if true_mean is not None and true_covariance is not None:
        report["kl_to_truth"] = metrics.kl_to_truth(true_mean, true_covariance, mean, covariance)
        report["w2_to_truth"] = metrics.wasserstein_to_truth(true_mean, true_covariance, mean, covariance)
    return report


def predict_onnx(version_dir: Path, inputs: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Predicted raw-unit ``mean`` ``(N, D)`` and ``covariance`` ``(N, D, D)`` of a published version.

    Runs ``version_dir/model.onnx`` (after :func:`~training.export.read_metadata` checked its sha256) in
    ONNX Runtime on the CPU, :data:`PREDICT_CHUNK_ROWS` rows at a time. ``inputs`` ``(N, M)`` are raw
    features in ``model.json``'s ``input_names`` order; raises :class:`UsageError` when their column count
    is not the model's ``in_dim`` or a row is not finite.
    """
    metadata = read_metadata(version_dir)
    return _predict(version_dir, metadata, _rows(inputs, "inputs", int(metadata["in_dim"]), version_dir))


def evaluate_model(
    version_dir: Path,
    inputs: ArrayLike,
    targets: ArrayLike,
    *,
    true_mean: ArrayLike | None = None,
    true_covariance: ArrayLike | None = None,
) -> Evaluation:
    """:func:`compute_metrics` of a published version's ONNX predictions on ``inputs`` ``(N, M)``.

    ``targets`` ``(N, D)`` are raw-unit targets in ``target_names`` order; ``true_mean`` ``(N, D)`` and
    ``true_covariance`` ``(N, D, D)`` add the distances to the truth. Raises :class:`UsageError` when the
    columns do not match the model, the row counts differ or a row is not finite.
    """
    metadata = read_metadata(version_dir)
    features = _rows(inputs, "inputs", int(metadata["in_dim"]), version_dir)
    observed = _rows(targets, "targets", int(metadata["out_dim"]), version_dir)
    if len(observed) != len(features):
        raise UsageError(f"targets: expected {len(features)} rows (one per input row), got {len(observed)}")
    if len(features) == 0:
        raise UsageError("inputs: expected at least one row to evaluate on, got 0")
    mean, covariance = _predict(version_dir, metadata, features)
    return Evaluation(
        compute_metrics(
            mean,
            covariance,
            observed,
            true_mean=true_mean,
            true_covariance=true_covariance,
        )
    )


def _rows(values: ArrayLike, name: str, columns: int, version_dir: Path) -> NDArray[np.float64]:
    """``values`` as a float64 ``(N, columns)`` array, finite in float32 too (the graph's input type)."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] != columns:
        got = f"{array.shape[1]} columns" if array.ndim == 2 else f"shape {array.shape}"
        raise UsageError(f"{name}: expected {columns} columns, as the model in {version_dir} has, got {got}")
    try:
        converted = array.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name}: expected numbers, got {array.dtype} ({exc})") from None
    with np.errstate(over="ignore"):
        bad = np.flatnonzero(~np.all(np.isfinite(converted.astype(np.float32)), axis=1))
    if bad.size:
        raise UsageError(f"{name}: row {int(bad[0])} is not finite in float32 ({bad.size} such rows)")
    return converted


def _predict(
    version_dir: Path, metadata: dict[str, Any], inputs: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    out_dim = int(metadata["out_dim"])
    mean = np.empty((len(inputs), out_dim), dtype=np.float64)
    covariance = np.empty((len(inputs), out_dim, out_dim), dtype=np.float64)
    if len(inputs) == 0:
        return mean, covariance
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(version_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    for start in range(0, len(inputs), PREDICT_CHUNK_ROWS):
        stop = start + PREDICT_CHUNK_ROWS
        chunk_mean, chunk_covariance = session.run(
            ["mean", "covariance"], {INPUT_NAME: inputs[start:stop].astype(np.float32)}
        )
        mean[start:stop] = chunk_mean
        covariance[start:stop] = chunk_covariance
    return mean, covariance

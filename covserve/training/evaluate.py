"""Re-check a published model from its ONNX graph alone (no torch, no weights file).

Scores with :func:`covserve.training.metrics.compute_metrics`, as the trainer does, so a model's
``model.json`` and a later :func:`evaluate_model` on the same data agree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from covserve.repository import INPUT_NAME, MODEL_FILE, OUTPUT_NAMES, ModelMetadata, session_options
from covserve.training.errors import UsageError
from covserve.training.export import read_published
from covserve.training.metrics import compute_metrics

__all__ = ["PREDICT_CHUNK_ROWS", "Evaluation", "check_column_names", "evaluate_model", "predict_onnx"]

_ORT_LOG_SEVERITY = 3
"""ONNX Runtime log lines from errors up."""

PREDICT_CHUNK_ROWS = 4096
"""Rows per ONNX Runtime call in :func:`predict_onnx`: bounds memory at ``O(chunk · D²)``."""


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a published model on one data set (keys as :func:`compute_metrics` returns them)."""

    metrics: dict[str, float]


def predict_onnx(
    version_dir: Path, inputs: ArrayLike, *, input_names: Sequence[str] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Predicted raw-unit ``mean`` ``(N, D)`` and ``covariance`` ``(N, D, D)`` of a published version.

    Runs ``version_dir/model.onnx`` (after :func:`~covserve.training.export.read_published` checked it) in
    ONNX Runtime on the CPU, :data:`PREDICT_CHUNK_ROWS` rows at a time. ``inputs`` ``(N, M)`` are raw
    features in ``model.json``'s ``input_names`` order; ``input_names``, when given, are checked against
    it (:func:`check_column_names`). Raises :class:`UsageError` when the names or the column count are not
    the model's or a row is not finite.
    """
    metadata = read_published(version_dir)
    check_column_names(metadata, version_dir, input_names=input_names)
    return _predict(version_dir, metadata, _rows(inputs, "inputs", metadata.in_dim, version_dir))


def evaluate_model(
    version_dir: Path,
    inputs: ArrayLike,
    targets: ArrayLike,
    *,
    input_names: Sequence[str] | None = None,
    target_names: Sequence[str] | None = None,
    true_mean: ArrayLike | None = None,
    true_covariance: ArrayLike | None = None,
) -> Evaluation:
    """:func:`~covserve.training.metrics.compute_metrics` of a published version's ONNX predictions on
    ``inputs`` ``(N, M)``.

    ``targets`` ``(N, D)`` are raw-unit targets in ``target_names`` order; ``true_mean`` ``(N, D)`` and
    ``true_covariance`` ``(N, D, D)`` add the distances to the truth. ``input_names`` and ``target_names``,
    the columns' names when known, must be the model's, in its order (:func:`check_column_names`). Raises
    :class:`UsageError` when the columns do not match the model, the row counts differ or a row is not
    finite.
    """
    metadata = read_published(version_dir)
    check_column_names(metadata, version_dir, input_names=input_names, target_names=target_names)
    features = _rows(inputs, "inputs", metadata.in_dim, version_dir)
    observed = _rows(targets, "targets", metadata.out_dim, version_dir)
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


def check_column_names(
    metadata: ModelMetadata,
    version_dir: Path,
    *,
    input_names: Sequence[str] | None = None,
    target_names: Sequence[str] | None = None,
) -> None:
    """Refuse columns named otherwise, or ordered otherwise, than ``model.json`` says; ``None`` skips a check.

    The message names both orders and the flag that selects the model's: a model scored on permuted
    columns gives a number, but a meaningless one.
    """
    for flag, given, expected in (
        ("--inputs", input_names, metadata.input_names),
        ("--targets", target_names, metadata.target_names),
    ):
        if given is None or tuple(given) == tuple(expected):
            continue
        how = "in another order" if sorted(given) == sorted(expected) else "other columns"
        raise UsageError(
            f"{flag}: the model in {version_dir} takes {list(expected)}, got {list(given)} ({how}); "
            f"select them with {flag} {','.join(expected)}"
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
    version_dir: Path, metadata: ModelMetadata, inputs: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    out_dim = metadata.out_dim
    mean = np.empty((len(inputs), out_dim), dtype=np.float64)
    covariance = np.empty((len(inputs), out_dim, out_dim), dtype=np.float64)
    if len(inputs) == 0:
        return mean, covariance
    options = session_options(os.cpu_count() or 1, _ORT_LOG_SEVERITY)
    session = ort.InferenceSession(str(version_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    for start in range(0, len(inputs), PREDICT_CHUNK_ROWS):
        stop = start + PREDICT_CHUNK_ROWS
        chunk_mean, chunk_covariance = session.run(
            list(OUTPUT_NAMES[:2]), {INPUT_NAME: inputs[start:stop].astype(np.float32)}
        )
        mean[start:stop] = chunk_mean
        covariance[start:stop] = chunk_covariance
    return mean, covariance

"""Open Inference Protocol v2 routes (KServe V2 / Triton HTTP) plus the perf_analyzer extensions.

``/infer`` reads the raw body (tritonclient sends no or a non-JSON Content-Type) and decodes it with
:mod:`service._oip`, so the unmodified ``tritonclient.http`` and ``tritonclient.http.aio`` clients work in
binary and JSON modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from covserve.repository import INPUT_NAME, OUTPUT_NAMES, output_shapes
from covserve.service._body import read_body
from covserve.service._errors import ApiError
from covserve.service._oip import HEADER_LENGTH_HEADER, encode_infer_response, parse_infer_request
from covserve.service._runtime import FLOAT32_MAX, LoadedModel, finite_in_float32

__all__ = [
    "InferenceStatistics",
    "infer",
    "model_config",
    "model_metadata",
    "model_ready",
    "model_statistics",
    "router",
]

PLATFORM = "onnxruntime_onnx"
NANOSECONDS = 1_000_000_000

router = APIRouter(prefix="/v2", tags=["open inference protocol"])


@dataclass
class InferenceStatistics:
    """Cumulative counters per model version, in the shape perf_analyzer reads from ``/stats``."""

    success_count: int = 0
    success_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    failure_count: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0


def _model(request: Request, name: str, version: str | None) -> LoadedModel:
    model: LoadedModel = request.app.state.models.get(name, version)
    return model


def _json(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Names, versions, platform and tensor signatures; ``properties`` adds provider and provenance."""
    model = _model(request, name, version)
    versions = sorted(request.app.state.models.versions[model.version.name])
    return _json(
        {
            "name": model.version.name,
            "versions": [str(v) for v in versions],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, model.version.in_dim]}],
            "outputs": [
                {"name": output, "datatype": "FP32", "shape": shape}
                for output, shape in output_shapes(model.version.out_dim).items()
            ],
            "properties": {
                "execution_provider": model.provider,
                "version": str(model.version.version),
                "input_names": list(model.version.input_names),
                "target_names": list(model.version.target_names),
                "onnx_sha256": model.version.onnx_sha256,
            },
        }
    )


async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 when the version is loaded and warmed up."""
    model = _model(request, name, version)
    return _json({"name": model.version.name, "ready": bool(request.app.state.models.ready)})


async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """Triton-style model configuration (``max_batch_size`` and per-row dims) for perf_analyzer."""
    model = _model(request, name, version)
    settings = request.app.state.settings
    return _json(
        {
            "name": model.version.name,
            "platform": PLATFORM,
            "max_batch_size": settings.max_rows,
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [model.version.in_dim]}],
            "output": [
                {"name": output, "data_type": "TYPE_FP32", "dims": shape[1:]}
                for output, shape in output_shapes(model.version.out_dim).items()
            ],
        }
    )


async def model_statistics(request: Request, name: str, version: str | None = None) -> Response:
    """Cumulative inference counters (Triton statistics extension) of one model version."""
    model = _model(request, name, version)
    key = (model.version.name, model.version.version)
    stats: InferenceStatistics = request.app.state.statistics.get(key, InferenceStatistics())
    return _json(
        {
            "model_stats": [
                {
                    "name": model.version.name,
                    "version": str(model.version.version),
                    "last_inference": stats.last_inference_ms,
                    "inference_count": stats.inference_count,
                    "execution_count": stats.success_count,
                    "inference_stats": {
                        "success": {"count": stats.success_count, "ns": stats.success_ns},
                        "fail": {"count": stats.failure_count, "ns": 0},
                        "queue": {"count": stats.success_count, "ns": stats.queue_ns},
                        "compute_input": {"count": stats.success_count, "ns": 0},
                        "compute_infer": {"count": stats.success_count, "ns": stats.compute_ns},
                        "compute_output": {"count": stats.success_count, "ns": 0},
                        "cache_hit": {"count": 0, "ns": 0},
                        "cache_miss": {"count": 0, "ns": 0},
                    },
                }
            ]
        }
    )


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """``POST /v2/models/{name}[/versions/{v}]/infer``: input ``x`` ``[B, D_in]``; outputs ``mean``,
    ``covariance``, ``scale`` (all by default), each JSON or binary as the request asks."""
    started = time.perf_counter_ns()
    state = request.app.state
    model = _model(request, name, version)
    statistics = state.statistics.setdefault(
        (model.version.name, model.version.version), InferenceStatistics()
    )
    try:
        decoded = parse_infer_request(
            await read_body(request),
            request.headers.get(HEADER_LENGTH_HEADER),
            state.settings.max_rows * model.version.in_dim,
        )
        inputs = _input_rows(decoded.inputs, model)
        requested = [output.name for output in decoded.outputs] if decoded.outputs else list(OUTPUT_NAMES)
        unknown = [output for output in requested if output not in OUTPUT_NAMES]
        if unknown:
            raise ApiError(400, f"outputs: expected names from {list(OUTPUT_NAMES)}, got {unknown}")
        outcome = await state.inference.run(model, inputs)
    except ApiError:
        statistics.failure_count += 1
        raise
    prediction = outcome.prediction
    arrays = {
        "mean": prediction.mean.astype(np.float32),
        "covariance": prediction.covariance.astype(np.float32),
        "scale": prediction.scale.astype(np.float32),
    }
    body, headers = encode_infer_response(
        model.version.name,
        str(model.version.version),
        decoded.id,
        [(output, arrays[output], decoded.binary_for(output)) for output in requested],
    )
    statistics.success_count += 1
    statistics.inference_count += len(inputs)
    statistics.queue_ns += int(outcome.queue_seconds * NANOSECONDS)
    statistics.compute_ns += int(outcome.compute_seconds * NANOSECONDS)
    statistics.success_ns += time.perf_counter_ns() - started
    statistics.last_inference_ms = int(time.time() * 1000)
    return Response(body, headers=headers)


def _input_rows(inputs: tuple[Any, ...], model: LoadedModel) -> np.ndarray:
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = [tensor.name for tensor in inputs]
        raise ApiError(400, f"inputs: expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = inputs[0]
    if len(tensor.shape) != 2 or tensor.shape[1] != model.version.in_dim or tensor.shape[0] < 1:
        raise ApiError(
            400,
            f"inputs[0].shape: expected [B, {model.version.in_dim}] with B >= 1, got {list(tensor.shape)}",
        )
    rows = np.asarray(tensor.data)
    finite = finite_in_float32(rows)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise ApiError(
            400,
            f"inputs[0] row {row}: expected finite numbers within ±{FLOAT32_MAX:.4g}, "
            "got NaN, infinity or beyond",
        )
    return rows.astype(np.float64, copy=False)


def _register() -> None:
    """Every model route with and without ``/versions/{version}``."""
    for suffix, endpoint, method in (
        ("", model_metadata, "GET"),
        ("/ready", model_ready, "GET"),
        ("/config", model_config, "GET"),
        ("/stats", model_statistics, "GET"),
        ("/infer", infer, "POST"),
    ):
        router.add_api_route(f"/models/{{name}}{suffix}", endpoint, methods=[method])
        router.add_api_route(f"/models/{{name}}/versions/{{version}}{suffix}", endpoint, methods=[method])


_register()

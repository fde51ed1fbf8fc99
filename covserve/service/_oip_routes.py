"""Open Inference Protocol v2 routes (KServe V2 / Triton HTTP) plus the perf_analyzer extensions.

``/infer`` reads the raw body (tritonclient sends no or a non-JSON Content-Type) and the data plane decodes
it with :mod:`covserve.service._oip`, so the unmodified ``tritonclient.http`` and ``tritonclient.http.aio``
clients work in binary and JSON modes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from covserve.repository import INPUT_NAME, output_shapes
from covserve.service._data_plane import DataPlane, DataPlaneDependency
from covserve.service._oip import BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER, JSON_CONTENT_TYPE
from covserve.service._responses import json_response
from covserve.service._routing import DataPlaneRoute, error_responses

__all__ = [
    "DATA_PLANE_ROUTES",
    "infer",
    "model_config",
    "model_metadata",
    "model_ready",
    "model_statistics",
    "router",
]

PLATFORM = "onnxruntime_onnx"
TAGS = ("open inference protocol",)

router = APIRouter(prefix="/v2", tags=list(TAGS))
MetadataEndpoint = Callable[[DataPlane, str, "str | None"], Awaitable[Response]]


async def model_metadata(plane: DataPlaneDependency, name: str, version: str | None) -> Response:
    """Names, versions, platform and tensor signatures; ``properties`` adds provider and provenance."""
    model = plane.models.get(name, version)
    versions = sorted(plane.models.versions[model.version.name])
    return json_response(
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


async def model_ready(plane: DataPlaneDependency, name: str, version: str | None) -> Response:
    """200 when the version is loaded and warmed up."""
    model = plane.models.get(name, version)
    return json_response({"name": model.version.name, "ready": bool(plane.models.ready)})


async def model_config(plane: DataPlaneDependency, name: str, version: str | None) -> Response:
    """Triton-style model configuration (``max_batch_size`` and per-row dims) for perf_analyzer."""
    model = plane.models.get(name, version)
    return json_response(
        {
            "name": model.version.name,
            "platform": PLATFORM,
            "max_batch_size": plane.settings.max_rows,
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [model.version.in_dim]}],
            "output": [
                {"name": output, "data_type": "TYPE_FP32", "dims": shape[1:]}
                for output, shape in output_shapes(model.version.out_dim).items()
            ],
        }
    )


async def model_statistics(plane: DataPlaneDependency, name: str, version: str | None) -> Response:
    """Cumulative inference counters (Triton statistics extension) of one model version."""
    model = plane.models.get(name, version)
    stats = plane.statistics(model)
    return json_response(
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


async def infer(plane: DataPlane, request: Request) -> Response:
    """Input ``x`` ``[B, D_in]`` as JSON or binary tensor data; outputs ``mean``, ``covariance`` and
    ``scale`` (all by default), each JSON or binary as the request asks."""
    parameters = request.path_params
    content, headers = await plane.infer(parameters["name"], parameters.get("version"), request)
    return Response(content, headers=headers)


def _latest(endpoint: MetadataEndpoint) -> Callable[[DataPlane, str], Awaitable[Response]]:
    """``endpoint`` for the latest version: a route without ``/versions/{version}`` takes no version (not
    even as a query parameter, which ``/infer`` would not take either)."""

    async def latest(plane: DataPlaneDependency, name: str) -> Response:
        return await endpoint(plane, name, None)

    latest.__name__ = f"{endpoint.__name__}_latest"
    latest.__doc__ = endpoint.__doc__
    return latest


def _register() -> None:
    """Every model metadata route with and without ``/versions/{version}``."""
    for suffix, endpoint in (
        ("", model_metadata),
        ("/ready", model_ready),
        ("/config", model_config),
        ("/stats", model_statistics),
    ):
        router.add_api_route(f"/models/{{name}}{suffix}", _latest(endpoint), methods=["GET"])
        router.add_api_route(f"/models/{{name}}/versions/{{version}}{suffix}", endpoint, methods=["GET"])


_register()

INFER_BODY = {
    "required": True,
    "content": {
        JSON_CONTENT_TYPE: {"schema": {"type": "object", "description": "an OIP v2 inference request"}},
        BINARY_CONTENT_TYPE: {
            "schema": {"type": "string", "format": "binary"},
            "description": f"the JSON request, then binary tensor data ({HEADER_LENGTH_HEADER} header)",
        },
    },
}
INFER_RESPONSES = error_responses(400, 401, 404, 408, 413, 422, 500, 503)
DATA_PLANE_ROUTES = tuple(
    DataPlaneRoute(path, infer, summary, TAGS, INFER_BODY, INFER_RESPONSES)
    for path, summary in (
        ("/v2/models/{name}/infer", "Infer with the latest version"),
        ("/v2/models/{name}/versions/{version}/infer", "Infer with a given version"),
    )
)
"""The OIP infer routes (Starlette routes of the data plane, see :mod:`covserve.service._routing`)."""

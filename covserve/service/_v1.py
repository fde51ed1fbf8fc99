"""The v1 (native) API: ``/v1/models``, ``/v1/models/{name}[/versions/{v}]/predict`` and ``.../condition``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from covserve.service._data_plane import DataPlane, DataPlaneDependency
from covserve.service._requests import ConditionRequest, PredictRequest
from covserve.service._responses import JSON, json_response
from covserve.service._routing import DataPlaneRoute, error_responses, json_body

__all__ = ["DATA_PLANE_ROUTES", "condition", "list_models", "predict_latest", "predict_version", "router"]

TAGS = ("native",)
router = APIRouter(prefix="/v1", tags=list(TAGS))


async def predict_latest(plane: DataPlane, request: Request) -> Response:
    """Body: ``{"inputs": [[x1, x2, ...]], "outputs": ["mean", "covariance", "interval"], "level": 0.9}``."""
    return json_response(await plane.predict(request.path_params["name"], None, request))


async def predict_version(plane: DataPlane, request: Request) -> Response:
    """As ``/v1/models/{name}/predict`` for one version."""
    parameters = request.path_params
    return json_response(await plane.predict(parameters["name"], parameters["version"], request))


async def condition(plane: DataPlane, request: Request) -> Response:
    """Body: ``{"inputs": [[...]], "observed": [{"<target>": value}]}``; returns, per row, the mean and
    covariance of the unobserved targets given the observed ones (Gaussian conditioning)."""
    return json_response(await plane.condition(request.path_params["name"], request))


@router.get("/models", summary="Served models")
async def list_models(plane: DataPlaneDependency) -> Response:
    """Names, versions, dims, target names, provider, readiness and training metrics of every model."""
    models = [
        {
            "name": loaded.version.name,
            "version": loaded.version.version,
            "in_dim": loaded.version.in_dim,
            "out_dim": loaded.version.out_dim,
            "inputs": list(loaded.version.input_names),
            "targets": list(loaded.version.target_names),
            "method": loaded.version.metadata.method,
            "labels": loaded.version.metadata.labels,
            "provider": loaded.provider,
            "ready": plane.models.ready,
            "test_metrics": loaded.version.metadata.test_metrics,
        }
        for loaded in plane.models
    ]
    problems = [{"path": str(problem.path), "reason": problem.reason} for problem in plane.models.problems]
    return json_response({"models": models, "skipped": problems})


PREDICT_EXAMPLES = {
    "rows": {"inputs": [[1.96, 3.47, 2.18, 2.25]]},
    "named features and chosen outputs": {
        "instances": [{"x0": 1.96, "x1": 3.47, "x2": 2.18, "x3": 2.25}],
        "outputs": ["mean", "std", "correlation", "interval", "mahalanobis_ood"],
        "level": 0.95,
    },
}
CONDITION_EXAMPLES = {
    "one observed target": {"inputs": [[1.96, 3.47, 2.18, 2.25]], "observed": [{"y1": -2.7}]}
}
PREDICT_RESPONSE = {
    "model": "demo",
    "version": 1,
    "targets": ["y0", "y1", "y2", "y3"],
    "outputs": {
        "mean": [[1.10, -2.68, -3.33, -4.40]],
        "covariance": [
            [
                [2.85, -0.27, 0.04, 0.20],
                [-0.27, 2.03, 0.81, 0.73],
                [0.04, 0.81, 1.93, 0.76],
                [0.20, 0.73, 0.76, 2.31],
            ]
        ],
    },
}
ERRORS = error_responses(400, 401, 404, 408, 413, 422, 503)
PREDICT_RESPONSES = {
    200: {"description": "Successful Response", "content": {JSON: {"example": PREDICT_RESPONSE}}},
    **ERRORS,
}

DATA_PLANE_ROUTES = (
    DataPlaneRoute(
        "/v1/models/{name}/predict",
        predict_latest,
        "Predict mean and covariance with the latest version",
        TAGS,
        json_body(PredictRequest, PREDICT_EXAMPLES),
        PREDICT_RESPONSES,
    ),
    DataPlaneRoute(
        "/v1/models/{name}/versions/{version}/predict",
        predict_version,
        "Predict with a given version",
        TAGS,
        json_body(PredictRequest, PREDICT_EXAMPLES),
        PREDICT_RESPONSES,
    ),
    DataPlaneRoute(
        "/v1/models/{name}/condition",
        condition,
        "Condition on observed targets",
        TAGS,
        json_body(ConditionRequest, CONDITION_EXAMPLES),
        ERRORS,
    ),
)
"""The v1 inference routes (Starlette routes of the data plane, see :mod:`covserve.service._routing`)."""

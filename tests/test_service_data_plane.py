"""The data plane inside FastAPI: Starlette routes first in the app's table, errors mapped to HTTP in one
place, typed dependencies, statistics owned by the data plane. In-process (``httpx.ASGITransport``): no
socket is needed to check routing and rendering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from covserve.gaussian import mahalanobis
from covserve.service import Settings, create_app
from covserve.service import _app as app_module
from covserve.service._data_plane import DataPlane, data_plane, of_app
from covserve.service._errors import (
    InvalidRequestError,
    ModelFailureError,
    NotFoundError,
    OverloadedError,
    ServiceError,
    TooLargeError,
)
from covserve.service._metrics import ServiceMetrics
from covserve.service._responses import service_error_response

__all__: list[str] = []

Result = TypeVar("Result")


@pytest.fixture(scope="module")
def repository(served_repository: Path) -> Path:
    return served_repository


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` in this process, with the app's lifespan (models loaded) around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://covserve") as client:
            yield client


def _with_client(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[Result]]) -> Result:
    async def run() -> Result:
        async with _client(app) as client:
            return await scenario(client)

    return asyncio.run(run())


def test_the_data_plane_routes_are_starlette_routes_at_the_head_of_the_route_table(repository: Path) -> None:
    app = create_app(Settings(repository=repository, threads=1))
    declared = [route.path for route in app_module.DATA_PLANE_ROUTES]
    head = app.router.routes[: len(declared)]
    assert all(isinstance(route, Route) and not isinstance(route, APIRoute) for route in head)
    assert [route.path for route in head if isinstance(route, Route)] == declared
    assert all(route.methods == {"POST"} for route in head if isinstance(route, Route))
    rest = [getattr(route, "path", "") for route in app.router.routes[len(declared) :]]
    assert not set(declared) & set(rest)  # each hot path has exactly one route


def test_every_data_plane_route_is_documented_with_its_path_parameters(repository: Path) -> None:
    document = create_app(Settings(repository=repository, threads=1)).openapi()
    for route in app_module.DATA_PLANE_ROUTES:
        operation = document["paths"][route.path]["post"]
        parameters = [parameter["name"] for parameter in operation["parameters"]]
        assert parameters == [part[1:-1] for part in route.path.split("/") if part.startswith("{")]
        assert operation["requestBody"]["required"] is True
        assert {"200", "400", "404", "413", "503"} <= set(operation["responses"])
        assert operation["summary"]
    operation_ids = [
        operation["operationId"] for path in document["paths"].values() for operation in path.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidRequestError("inputs: bad"), 400),
        (NotFoundError("model 'x' not found"), 404),
        (TooLargeError("body: too big"), 413),
        (ModelFailureError("invalid covariance"), 500),
        (OverloadedError("server busy", 3), 503),
    ],
)
def test_each_domain_error_maps_to_one_status_with_its_message(error: ServiceError, status: int) -> None:
    response = service_error_response(error)
    assert response.status_code == status
    assert orjson.loads(bytes(response.body)) == {"error": error.message}
    assert response.headers.get("retry-after") == ("3" if status == 503 else None)


def test_errors_of_the_hot_routes_are_rendered_by_the_app_handlers(repository: Path) -> None:
    app = create_app(Settings(repository=repository, threads=1))

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/v1/models/nope/predict", json={"inputs": [[0.0, 0.0, 0.0]]}),
            await client.post("/v1/models/alpha/versions/x/predict", json={"inputs": [[0.0, 0.0, 0.0]]}),
            await client.post("/v1/models/alpha/predict", content=b"{"),
            await client.get("/v1/models/alpha/predict"),
            await client.post("/v2/models/alpha/infer", content=b"[]"),
        ]

    missing, bad_version, bad_json, wrong_method, bad_infer = _with_client(app, scenario)
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'nope' not found (served models: alpha, beta)"}
    assert bad_version.status_code == 400
    assert bad_version.json()["error"].startswith("version: expected a positive integer")
    assert bad_json.status_code == 400
    assert bad_json.json()["error"].startswith("body: expected a JSON object, got invalid JSON")
    assert wrong_method.status_code == 405  # Starlette's HTTPException, through the app's handler
    assert wrong_method.json() == {"error": "GET /v1/models/alpha/predict: Method Not Allowed"}
    assert bad_infer.status_code == 400
    assert "error" in bad_infer.json()


def test_routes_receive_the_data_plane_as_a_typed_dependency_that_tests_can_override(
    repository: Path, tmp_path: Path
) -> None:
    app = create_app(Settings(repository=repository, threads=1))
    empty = DataPlane(Settings(repository=tmp_path, threads=1), ServiceMetrics())
    empty.models.refresh()
    app.dependency_overrides[data_plane] = lambda: empty

    async def scenario(client: httpx.AsyncClient) -> tuple[dict[str, object], int]:
        listed = (await client.get("/v1/models")).json()
        return listed, (await client.get("/v2/models/alpha")).status_code

    listed, metadata_status = _with_client(app, scenario)
    assert listed == {"models": [], "skipped": []}
    assert metadata_status == 404
    assert [loaded.version.name for loaded in of_app(app).models] == ["alpha", "beta", "beta"]


def test_the_data_plane_counts_oip_successes_and_failures_and_returns_mahalanobis_once(
    repository: Path,
) -> None:
    app = create_app(Settings(repository=repository, threads=1))
    rows = np.array([[0.5, -1.0, 2.0], [3.0, 1.0, -2.0]])

    async def scenario(client: httpx.AsyncClient) -> tuple[list[int], dict[str, object]]:
        infer = {
            "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": rows.ravel().tolist()}]
        }
        statuses = [
            (await client.post("/v2/models/alpha/infer", json=infer)).status_code,
            (await client.post("/v2/models/alpha/infer", json={"inputs": []})).status_code,
        ]
        predicted = await client.post(
            "/v1/models/alpha/predict", json={"inputs": rows.tolist(), "outputs": ["mahalanobis_ood"]}
        )
        return statuses, predicted.json()

    statuses, predicted = _with_client(app, scenario)
    assert statuses == [200, 400]
    plane = of_app(app)
    model = plane.models.get("alpha")
    counters = plane.statistics(model)
    assert (counters.success_count, counters.failure_count, counters.inference_count) == (1, 1, 2)
    expected = mahalanobis(
        rows.astype(np.float32), model.version.training_mean, model.version.training_precision
    )
    outputs = predicted["outputs"]
    assert isinstance(outputs, dict)
    np.testing.assert_allclose(outputs["mahalanobis_ood"], expected, rtol=1e-12)

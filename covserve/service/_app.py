"""The FastAPI application: lifespan loading, error rendering, auth, health, metrics, accounting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from covserve import __version__
from covserve.service._access import AccessMiddleware
from covserve.service._direct import DirectRoutes
from covserve.service._errors import ApiError, error_response
from covserve.service._inference import Inference
from covserve.service._metrics import ServiceMetrics
from covserve.service._oip_routes import infer
from covserve.service._oip_routes import router as oip_router
from covserve.service._openapi import with_schemas
from covserve.service._registry import ServedModels
from covserve.service._repository_routes import router as repository_router
from covserve.service._settings import Settings
from covserve.service._v1 import (
    ConditionRequest,
    PredictRequest,
    condition,
    predict_latest,
    predict_version,
)
from covserve.service._v1 import router as v1_router

__all__ = ["create_app"]

LOGGER = logging.getLogger("covserve.service")
SERVER_NAME = "covserve"
HOT_ENDPOINTS = (predict_latest, predict_version, condition, infer)
"""Hot routes whose endpoints :class:`DirectRoutes` calls without FastAPI's per-request machinery."""


async def _poll(models: ServedModels, seconds: float) -> None:
    """Reload changed versions every ``seconds`` (``--poll-seconds``)."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(models.refresh)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A covserve application over ``settings.repository`` (models load in the lifespan, before serving)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(app.state.models.refresh)
        app.state.inference = Inference(settings, metrics)
        poller = (
            asyncio.create_task(_poll(app.state.models, settings.poll_seconds))
            if settings.poll_seconds
            else None
        )
        yield
        app.state.models.draining = True
        if poller is not None:
            poller.cancel()
        app.state.inference.shutdown()

    app = FastAPI(
        title="covserve",
        version=__version__,
        description="Predictive mean vectors and full covariance matrices from ONNX models.",
        lifespan=lifespan,
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.models = ServedModels(settings, metrics)
    app.state.statistics = {}

    @app.exception_handler(ApiError)
    async def apierror_response(request: Request, error: ApiError) -> Response:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validationerror_response(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return error_response(400, f"{location}: {first['msg']}")

    @app.exception_handler(HTTPException)
    async def httperror_response(request: Request, error: HTTPException) -> Response:
        message = "route not found" if error.status_code == 404 else str(error.detail)
        return error_response(error.status_code, f"{request.method} {request.url.path}: {message}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        LOGGER.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal error; the server log has the details")

    @app.get("/v2/health/live", tags=["health"], summary="Liveness: the process answers")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get(
        "/v2/health/ready", tags=["health"], summary="Readiness: every model loaded, warmed, not draining"
    )
    async def ready() -> Response:
        if app.state.models.ready and not app.state.models.draining:
            return Response(status_code=200)
        return error_response(503, "not ready: models are loading or the server is draining")

    @app.get("/v2", tags=["health"], summary="Server metadata")
    async def server_metadata() -> Response:
        return Response(
            orjson.dumps({"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}),
            media_type="application/json",
        )

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.openapi = with_schemas(app, (PredictRequest, ConditionRequest))  # type: ignore[method-assign]
    app.include_router(v1_router)
    app.include_router(oip_router)
    app.include_router(repository_router)
    hot = [
        route
        for router in (v1_router, oip_router)
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in HOT_ENDPOINTS
    ]
    app.add_middleware(DirectRoutes, routes=hot)
    app.add_middleware(
        AccessMiddleware,
        settings=settings,
        metrics=metrics,
        models=app.state.models,
        keys=settings.bearer_keys(),
    )
    return app

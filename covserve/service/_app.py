"""The FastAPI application: lifespan loading, error rendering, auth, health, metrics and the data plane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from covserve import __version__
from covserve.service import _oip_routes, _v1
from covserve.service._access import AccessMiddleware
from covserve.service._data_plane import DataPlane, DataPlaneDependency, attach
from covserve.service._errors import ServiceError
from covserve.service._metrics import ServiceMetrics
from covserve.service._registry import ServedModels
from covserve.service._repository_routes import router as repository_router
from covserve.service._requests import ConditionRequest, PredictRequest
from covserve.service._responses import error_response, json_response, service_error_response
from covserve.service._routing import documented, error_responses
from covserve.service._settings import Settings

__all__ = ["create_app"]

LOGGER = logging.getLogger("covserve.service")
SERVER_NAME = "covserve"
DATA_PLANE_ROUTES = (*_v1.DATA_PLANE_ROUTES, *_oip_routes.DATA_PLANE_ROUTES)


async def _poll(models: ServedModels, seconds: float) -> None:
    """Reload changed versions every ``seconds`` (``--poll-seconds``)."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(models.refresh)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A covserve application over ``settings.repository`` (models load in the lifespan, before serving)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    plane = DataPlane(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(plane.models.refresh)
        reason = plane.models.unready_reason()
        if reason is not None:
            LOGGER.warning("not ready: %s", reason)
        poller = (
            asyncio.create_task(_poll(plane.models, settings.poll_seconds)) if settings.poll_seconds else None
        )
        yield
        if poller is not None:
            poller.cancel()
        plane.shutdown()

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
    attach(app, plane)
    # the data plane's routes first: the router tries routes in order, and these take the load
    app.router.routes[:0] = [route.route(plane) for route in DATA_PLANE_ROUTES]

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> Response:
        return service_error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return error_response(400, f"{location}: {first['msg']}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = "route not found" if error.status_code == 404 else str(error.detail)
        return error_response(
            error.status_code, f"{request.method} {request.url.path}: {message}", error.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        LOGGER.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal error; the server log has the details")

    @app.get(
        "/v2/health/live",
        tags=["health"],
        summary="Liveness: the process answers",
        response_class=Response,
        responses={200: {"description": "alive (empty body)"}},
    )
    async def live() -> Response:
        return Response(status_code=200)

    @app.get(
        "/v2/health/ready",
        tags=["health"],
        summary="Readiness: every model loaded, warmed, not draining",
        response_class=Response,
        responses={200: {"description": "ready (empty body)"}, **error_responses(503)},
    )
    async def ready(plane: DataPlaneDependency) -> Response:
        reason = plane.models.unready_reason()
        if reason is None:
            return Response(status_code=200)
        return error_response(503, f"not ready: {reason}")

    @app.get("/v2", tags=["health"], summary="Server metadata")
    async def server_metadata() -> Response:
        return json_response(
            {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    @app.get(
        "/metrics",
        tags=["monitoring"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.openapi = documented(app, DATA_PLANE_ROUTES, (PredictRequest, ConditionRequest))  # type: ignore[method-assign]
    app.include_router(_v1.router)
    app.include_router(_oip_routes.router)
    app.include_router(repository_router)
    app.add_middleware(
        AccessMiddleware,
        settings=settings,
        metrics=metrics,
        models=plane.models,
        keys=settings.bearer_keys(),
        admin_keys=settings.admin_bearer_keys(),
    )
    return app

"""Pure ASGI middleware in front of every route: bearer auth, the declared body limit, accounting, access log.

It is plain ASGI rather than ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``), which wraps
every request and response in extra tasks and streams and costs a large share of a small request.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Sequence

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service._metrics import ServiceMetrics
from service._settings import Settings

__all__ = ["AccessMiddleware", "error_body"]

LOGGER = logging.getLogger("covserve.access")
OPEN_PATHS = ("/v2/health/", "/docs", "/openapi.json", "/redoc")
METRICS_PATH = "/metrics"
BEARER = b"Bearer "
JSON_HEADERS = [(b"content-type", b"application/json")]
UNAUTHORISED = "authorization: expected 'Bearer <api key>', got a missing or unknown key"


def error_body(message: str) -> bytes:
    """The JSON error document ``{"error": message}``."""
    return orjson.dumps({"error": message})


class AccessMiddleware:
    """Refuses unauthorised (401) and declared-oversized (413) requests, then counts, times and logs.

    Per request: ``covserve_requests_total{model,version,route,code}``, ``covserve_request_duration_seconds``,
    ``covserve_inflight_requests``, an ``x-request-id`` response header (the client's, or a fresh one) and
    one JSON access-log line. Keys are compared in constant time and never logged.
    """

    def __init__(
        self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics, keys: Sequence[str]
    ) -> None:
        self._app = app
        self._settings = settings
        self._metrics = metrics
        self._keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        path: str = scope["path"]
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        refusal = self._refusal(path, headers)
        status = 500
        tagged = [(b"x-request-id", request_id.encode("latin-1"))]

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *tagged]
            await send(message)

        self._metrics.inflight.inc()
        try:
            if refusal is None:
                await self._app(scope, receive, send_tagged)
            else:
                code, message = refusal
                await _send_error(send_tagged, code, message)
        finally:
            self._metrics.inflight.dec()
            self._account(scope, request_id, status, time.perf_counter() - started)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        needs_key = (
            self._keys
            and not path.startswith(OPEN_PATHS)
            and (path != METRICS_PATH or self._settings.protect_metrics)
        )
        if needs_key and not self._authorised(headers.get(b"authorization", b"")):
            return 401, UNAUTHORISED
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._settings.max_body_bytes:
            return 413, f"body: at most {self._settings.max_body_bytes} bytes, got {declared.decode()}"
        return None

    def _authorised(self, supplied: bytes) -> bool:
        token = supplied[len(BEARER) :] if supplied.startswith(BEARER) else b""
        return any(hmac.compare_digest(token, key) for key in self._keys)

    def _account(self, scope: Scope, request_id: str, status: int, elapsed: float) -> None:
        parameters = scope.get("path_params", {})
        model, version = str(parameters.get("name", "")), str(parameters.get("version", ""))
        route = str(getattr(scope.get("route"), "path", "unmatched"))
        self._metrics.requests.labels(model, version, route, str(status)).inc()
        self._metrics.request_duration.labels(model, route).observe(elapsed)
        if LOGGER.isEnabledFor(logging.INFO):
            LOGGER.info(
                orjson.dumps(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "model": model,
                        "version": version,
                        "status": status,
                        "seconds": round(elapsed, 6),
                    }
                ).decode()
            )


async def _send_error(send: Send, status: int, message: str) -> None:
    body = error_body(message)
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""Pure ASGI middleware in front of every route: bearer auth, the declared body limit, accounting, access log.

It is plain ASGI rather than ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``), which wraps
every request and response in extra tasks and streams and costs a large share of a small request.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Sequence

import orjson
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covserve.service._metrics import ServiceMetrics
from covserve.service._registry import VERSION_PATTERN, ServedModels
from covserve.service._responses import error_body
from covserve.service._settings import Settings

__all__ = ["AccessMiddleware"]

LOGGER = logging.getLogger("covserve.access")
OPEN_PATHS = ("/v2/health/", "/docs", "/openapi.json", "/redoc")
METRICS_PATH = "/metrics"
ADMIN_PATHS = "/v2/repository/"
AUTHORIZATION = b"authorization"
BEARER = b"Bearer "
JSON_HEADERS = [(b"content-type", b"application/json")]
CLOSE = (b"connection", b"close")
"""Sent with a response that leaves a large request body unread: the connection is closed after it (the
server's lingering close) rather than kept by reading and discarding the rest of a refused upload."""
DISCARDED_BODY_BYTES = 256 * 1024
"""Largest unread body a connection is kept for (read and discarded after the response), as Go's
net/http does."""
UNAUTHORISED = "authorization: expected 'Bearer <api key>', got a missing or unknown key"
UNAUTHORISED_ADMIN = (
    "authorization: expected 'Bearer <admin key>' for the repository API, got a missing or unknown key"
)
ADMIN_OFF = (
    "the repository API (index, load, unload) is off on this server: start covserve-serve with "
    "--admin-keys or --admin-key-file to use it"
)


class AccessMiddleware:
    """Refuses unauthorised (401), forbidden (403) and declared-oversized (413) requests, then counts,
    times and logs.

    Two roles: API keys (``--api-keys``) for inference, model metadata and (with ``--protect-metrics``)
    ``/metrics``; admin keys (``--admin-keys``) for the repository API, which without admin keys is open
    only on a loopback host with no API keys, and otherwise refused (403). Two ``Authorization`` headers
    are a 400, never "the last one wins".

    Per request: ``covserve_requests_total{model,version,route,code}``, ``covserve_request_duration_seconds``,
    ``covserve_inflight_requests``, an ``x-request-id`` response header (the client's, or a fresh one) and
    one JSON access-log line (unless ``access_log`` is off). The ``model`` and ``version`` labels name
    served models only (a path naming anything else is counted under ``""``), so clients cannot grow the
    label set. Keys are compared in constant time and never logged.

    A response that leaves more than :data:`DISCARDED_BODY_BYTES` of its request's body unread (a refusal
    before the body is read: 401, 404, 413, 503) carries ``connection: close``.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics: ServiceMetrics,
        models: ServedModels,
        keys: Sequence[str],
        admin_keys: Sequence[str],
    ) -> None:
        self._app = app
        self._settings = settings
        self._metrics = metrics
        self._models = models
        self._keys = [key.encode() for key in keys]
        self._admin_keys = [key.encode() for key in admin_keys]
        self._admin_open = settings.admin_api_open()
        self._request_ids = _RequestIds()
        self._series: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        self._inflight = 0  # read by the gauge at scrape time: no metric update per request
        metrics.inflight.set_function(lambda: self._inflight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        path: str = scope["path"]
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or self._request_ids.next()
        refusal = self._refusal(path, headers, scope["headers"])
        status = 500
        tagged = (b"x-request-id", request_id.encode("latin-1"))
        unread = _large_body(headers)

        async def receive_counted() -> Message:
            nonlocal unread
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                unread = False
            return message

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [tagged, CLOSE] if unread else [tagged]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        self._inflight += 1
        try:
            if refusal is None:
                await self._app(scope, receive_counted if unread else receive, send_tagged)
            else:
                code, message = refusal
                await _send_error(send_tagged, code, message)
        finally:
            self._inflight -= 1
            self._account(scope, request_id, status, time.perf_counter() - started)

    def _refusal(
        self, path: str, headers: dict[bytes, bytes], raw: list[tuple[bytes, bytes]]
    ) -> tuple[int, str] | None:
        supplied = headers.get(AUTHORIZATION)
        if supplied is not None and sum(1 for name, _ in raw if name == AUTHORIZATION) > 1:
            return 400, "authorization: expected one Authorization header, got several"
        if path.startswith(ADMIN_PATHS):
            if not self._admin_open:
                if not self._admin_keys:
                    return 403, ADMIN_OFF
                if not _authorised(supplied or b"", self._admin_keys):
                    return 401, UNAUTHORISED_ADMIN
        elif (
            self._keys
            and not path.startswith(OPEN_PATHS)
            and (path != METRICS_PATH or self._settings.protect_metrics)
            and not _authorised(supplied or b"", self._keys)
        ):
            return 401, UNAUTHORISED
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._settings.max_body_bytes:
            return 413, f"body: at most {self._settings.max_body_bytes} bytes, got {declared.decode()}"
        return None

    def _account(self, scope: Scope, request_id: str, status: int, elapsed: float) -> None:
        model, version = self._served(scope.get("path_params", {}))
        route = str(getattr(scope.get("route"), "path", "unmatched"))
        key = (model, version, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self._metrics.requests.labels(model, version, route, str(status)),
                self._metrics.request_duration.labels(model, route),
            )
        requests, duration = series
        requests.inc()
        duration.observe(elapsed)
        if self._settings.access_log and LOGGER.isEnabledFor(logging.INFO):
            line = orjson.dumps(
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
            # a record made directly: Logger.info would walk the (deep, async) stack for the caller's line
            LOGGER.handle(LOGGER.makeRecord(LOGGER.name, logging.INFO, __file__, 0, line, (), None))

    def _served(self, parameters: dict[str, str]) -> tuple[str, str]:
        """``(model, version)`` labels: the path's, where they name a served model (and version)."""
        versions = self._models.versions.get(parameters.get("name", ""))
        if versions is None:
            return "", ""
        version = parameters.get("version", "")
        served = VERSION_PATTERN.fullmatch(version) is not None and int(version) in versions
        return parameters["name"], version if served else ""


class _RequestIds:
    """Fresh request ids: 32 hex digits, a random per-process prefix and a counter (unique, cheap)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


def _large_body(headers: dict[bytes, bytes]) -> bool:
    """Whether the request's body is too large to discard for keeping the connection: a declared length
    over :data:`DISCARDED_BODY_BYTES`, or a chunked upload (its length unknown)."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit():
        return int(declared) > DISCARDED_BODY_BYTES
    return b"transfer-encoding" in headers


def _authorised(supplied: bytes, keys: Sequence[bytes]) -> bool:
    """Whether ``supplied`` is ``Bearer <one of keys>`` (compared in constant time)."""
    token = supplied[len(BEARER) :] if supplied.startswith(BEARER) else b""
    return any(hmac.compare_digest(token, key) for key in keys)


async def _send_error(send: Send, status: int, message: str) -> None:
    body = error_body(message)
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""Connection limits uvicorn does not enforce by itself: an idle timeout from the first byte, and a cap.

uvicorn closes a keep-alive connection that stays idle ``timeout_keep_alive`` seconds *after a response*,
but a connection that never sends a request stays open for good, and ``limit_concurrency`` answers 503 to
requests without closing connections: 1 100 silent connections exhaust a 1 024 file-descriptor limit and
the server stops accepting anyone. :func:`guarded_protocol` gives uvicorn an HTTP protocol that also arms
the idle timeout when a connection opens, and refuses a connection beyond ``max_connections`` at once
(a 503 and close). A client that trickles its headers is beyond what this catches; put a reverse proxy
with a header timeout in front of an exposed server (``docker/README.md``).
"""

from __future__ import annotations

import asyncio
import resource

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from covserve.service._responses import error_body
from covserve.service._settings import Settings

__all__ = [
    "DRAIN_SECONDS",
    "OVER_CAPACITY_RESPONSE",
    "SPARE_FILES",
    "guarded_protocol",
    "raise_open_file_limit",
    "uvicorn_config",
]

DRAIN_SECONDS = 30
"""Longest wait for in-flight requests after SIGTERM (match Kubernetes' terminationGracePeriodSeconds)."""
SPARE_FILES = 256
"""Open files beyond ``--max-connections``: model files, sessions, log handlers, the listening socket."""
_OVER_CAPACITY_BODY = error_body("server busy: too many open connections; retry later")
OVER_CAPACITY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: "
    + str(len(_OVER_CAPACITY_BODY)).encode()
    + b"\r\n\r\n"
    + _OVER_CAPACITY_BODY
)
"""What a connection beyond the cap receives before it is closed (no request is read)."""


def uvicorn_config(app: ASGIApp, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's configuration for ``app``: ``settings``' host, port, idle timeout and connection cap,
    the guarded protocol, no uvicorn access log (covserve logs its own), the SIGTERM drain time."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        http=guarded_protocol(settings.max_connections),
        timeout_keep_alive=settings.idle_timeout_seconds,
        timeout_graceful_shutdown=DRAIN_SECONDS,
    )


def guarded_protocol(max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the idle timeout armed at connection time and at most
    ``max_connections`` open connections."""

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.transport.write(OVER_CAPACITY_RESPONSE)
                self.transport.close()
                return
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    return GuardedProtocol


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (never above the hard limit, never
    lower than it is); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft

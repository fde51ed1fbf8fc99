"""What uvicorn does not do for a connection by itself: an idle timeout from the first byte, a header
timeout, a cap, JSON for malformed HTTP, and a graceful close after a response that leaves the request's
body unread.

uvicorn closes a keep-alive connection that stays idle ``timeout_keep_alive`` seconds *after a response*,
but a connection that never sends a request stays open for good, one that sends its headers a byte at a
time is never timed out, and ``limit_concurrency`` answers 503 to requests without closing connections:
1 100 silent connections exhaust a 1 024 file-descriptor limit and the server stops accepting anyone.
:func:`guarded_protocol` gives uvicorn an HTTP protocol that arms the idle timeout when a connection opens,
answers 408 and closes when a request's headers are not complete within ``--header-timeout-seconds`` of
its first byte, refuses a connection beyond ``max_connections`` at once (a 503 and close), and answers a
request that is not HTTP with a JSON 400 (uvicorn's own is plain text).

A response sent with ``connection: close`` before its request's body has arrived (a refused upload) would
have uvicorn close the socket with the body's bytes still queued, and the kernel then resets the
connection: a client still sending sees "connection reset" instead of the answer. The guarded protocol
closes such a connection as web servers do ("lingering close"): it ends its side after the response and
discards what still arrives until the client closes or :data:`LINGER_SECONDS` pass.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from covserve.service._responses import error_body
from covserve.service._settings import Settings

__all__ = [
    "DRAIN_SECONDS",
    "LINGER_SECONDS",
    "MALFORMED_RESPONSE",
    "OVER_CAPACITY_RESPONSE",
    "SPARE_FILES",
    "guarded_protocol",
    "header_timeout_response",
    "raise_open_file_limit",
    "uvicorn_config",
]

DRAIN_SECONDS = 30
"""Longest wait for in-flight requests after SIGTERM (match Kubernetes' terminationGracePeriodSeconds)."""
LINGER_SECONDS = 2.0
"""Longest a connection stays open to discard the rest of a refused body after its response (nginx's
``lingering_time`` is 30 s; a client that reads its answer stops sending in far less)."""
SPARE_FILES = 256
"""Open files beyond ``--max-connections``: model files, sessions, log handlers, the listening socket."""


def _closing_response(status: str, message: str, *headers: str) -> bytes:
    """A raw HTTP/1.1 response with an ``{"error": message}`` body that announces the connection's close."""
    body = error_body(message)
    head = [f"HTTP/1.1 {status}", "content-type: application/json", *headers, "connection: close"]
    return ("\r\n".join([*head, f"content-length: {len(body)}", "", ""])).encode() + body


OVER_CAPACITY_RESPONSE = _closing_response(
    "503 Service Unavailable", "server busy: too many open connections; retry later", "retry-after: 1"
)
"""What a connection beyond the cap receives before it is closed (no request is read)."""
MALFORMED_RESPONSE = _closing_response(
    "400 Bad Request", "request: not a valid HTTP/1.1 request (RFC 9112); the connection is closed"
)
"""What a connection receives, before it is closed, when its bytes are not HTTP."""


def header_timeout_response(seconds: float) -> bytes:
    """What a request whose headers are not complete ``seconds`` after its first byte receives before its
    connection is closed."""
    return _closing_response(
        "408 Request Timeout", f"headers: not complete within {seconds:g} s of the request's first byte"
    )


def uvicorn_config(app: ASGIApp, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's configuration for ``app``: ``settings``' host, port, timeouts and connection cap in the
    guarded protocol, no uvicorn access log (covserve logs its own), the SIGTERM drain time."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        http=guarded_protocol(settings.max_connections, settings.header_timeout_seconds),
        timeout_keep_alive=settings.idle_timeout_seconds,
        timeout_graceful_shutdown=DRAIN_SECONDS,
    )


def guarded_protocol(max_connections: int, header_timeout_seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the idle timeout armed at connection time, a header timeout, at
    most ``max_connections`` open connections, JSON for malformed HTTP, and a lingering close after a
    response sent before its request's body arrived."""

    timed_out = header_timeout_response(header_timeout_seconds)

    class GuardedProtocol(HttpToolsProtocol):
        header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.guarded_transport = _LingeringTransport(transport, self.body_arriving)
            super().connection_made(self.guarded_transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections:
                self._close_with(OVER_CAPACITY_RESPONSE)
                return
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            self.guarded_transport.stop_lingering()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self.guarded_transport.lingering:
                super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._cancel_header_deadline()
            self.header_deadline = self.loop.call_later(header_timeout_seconds, self._close_with, timed_out)

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            self._close_with(MALFORMED_RESPONSE)

        def body_arriving(self) -> bool:
            """Whether the current request's body is still arriving."""
            return self.cycle is not None and self.cycle.more_body and not self.cycle.disconnected

        def _close_with(self, response: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

        def _cancel_header_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

    return GuardedProtocol


class _LingeringTransport:
    """A connection's transport whose :meth:`close` lingers while the request's body is still arriving:
    the response is flushed, the write side shut (the client reads the answer, then end of stream), and
    the connection closed when the client closes it or after :data:`LINGER_SECONDS`, whichever is first.
    Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, body_arriving: Callable[[], bool]) -> None:
        self._transport = transport
        self._body_arriving = body_arriving
        self.lingering = False
        self._deadline: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing() or not self._body_arriving():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        transport.resume_reading()
        self._deadline = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def stop_lingering(self) -> None:
        """Forget the lingering deadline (the connection is gone)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (never above the hard limit, never
    lower than it is); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft

"""HTTP responses: JSON documents, ``{"error": ...}`` documents, the one map from domain error to status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from covserve.service._errors import (
    ClientGoneError,
    ForbiddenError,
    InvalidRequestError,
    ModelFailureError,
    NotFoundError,
    OverloadedError,
    RequestTimeoutError,
    ServiceError,
    TooLargeError,
    UnanswerableInputError,
)

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "JSON",
    "STATUS_OF",
    "error_body",
    "error_response",
    "json_response",
    "service_error_response",
]

JSON = "application/json"

CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a client that went away before its answer: counted, never sent."""

STATUS_OF: dict[type[ServiceError], int] = {
    InvalidRequestError: 400,
    ForbiddenError: 403,
    NotFoundError: 404,
    RequestTimeoutError: 408,
    TooLargeError: 413,
    UnanswerableInputError: 422,
    ClientGoneError: CLIENT_CLOSED_REQUEST,
    ModelFailureError: 500,
    OverloadedError: 503,
}
"""HTTP status of each domain error class (a subclass takes its nearest listed base's status)."""


def json_response(payload: Any) -> Response:
    """``payload`` as ``application/json``; NumPy arrays are serialised as nested lists."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)


def error_body(message: str) -> bytes:
    """The JSON error document ``{"error": message}``."""
    return orjson.dumps({"error": message})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """An ``{"error": message}`` response with ``status`` and extra ``headers``."""
    return Response(error_body(message), status_code=status, media_type=JSON, headers=headers)


def service_error_response(error: ServiceError) -> Response:
    """The response for a domain error: its status from :data:`STATUS_OF`, ``Retry-After`` when overloaded."""
    status = next(STATUS_OF[kind] for kind in type(error).__mro__ if kind in STATUS_OF)
    headers = {"Retry-After": str(error.retry_after_seconds)} if isinstance(error, OverloadedError) else None
    return error_response(status, error.message, headers)

"""The error every route raises for a client-visible failure, and its ``{"error": ...}`` rendering."""

from __future__ import annotations

import orjson
from starlette.responses import Response

__all__ = ["ApiError", "error_body", "error_response"]

JSON = "application/json"


class ApiError(Exception):
    """An HTTP error with a message that names the field, what was expected and what was received."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    """The JSON error document ``{"error": message}``."""
    return orjson.dumps({"error": message})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An ``{"error": message}`` response with ``status`` and extra ``headers``."""
    return Response(error_body(message), status_code=status, media_type=JSON, headers=headers)

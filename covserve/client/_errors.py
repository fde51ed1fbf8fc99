"""The client's exceptions: one class per kind of failure, each carrying the server's own message."""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "CovserveError",
    "ForbiddenError",
    "HTTPStatusError",
    "NotFoundError",
    "RequestTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "TooLargeError",
    "TransportError",
    "UnanswerableInputError",
    "error_for_status",
]


class CovserveError(Exception):
    """Every error the client raises."""


class TransportError(CovserveError):
    """No HTTP answer: the server could not be reached, or the connection failed or timed out."""


class HTTPStatusError(CovserveError):
    """The server answered with an error status; ``message`` is its ``{"error": ...}`` text."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds the server asked the client to wait (``Retry-After``), if it said."""


class BadRequestError(HTTPStatusError):
    """400: the request is malformed or does not fit the model."""


class AuthenticationError(HTTPStatusError):
    """401: no valid API key (``Client(api_key=...)``)."""


class ForbiddenError(HTTPStatusError):
    """403: the route is switched off on this server."""


class NotFoundError(HTTPStatusError):
    """404: no such model, version or route."""


class RequestTimeoutError(HTTPStatusError):
    """408: the server did not receive the whole request in time."""


class TooLargeError(HTTPStatusError):
    """413: the request is over the server's body or row limit."""


class UnanswerableInputError(BadRequestError):
    """422: well-formed rows the model cannot answer (far outside its training inputs)."""


class ServiceUnavailableError(HTTPStatusError):
    """503: the server is full; raised once the client's retries are spent."""


class ServerError(HTTPStatusError):
    """Any other status: a server fault."""


_CLASS_OF: dict[int, type[HTTPStatusError]] = {
    HTTPStatus.BAD_REQUEST: BadRequestError,
    HTTPStatus.UNAUTHORIZED: AuthenticationError,
    HTTPStatus.FORBIDDEN: ForbiddenError,
    HTTPStatus.NOT_FOUND: NotFoundError,
    HTTPStatus.REQUEST_TIMEOUT: RequestTimeoutError,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: TooLargeError,
    HTTPStatus.UNPROCESSABLE_ENTITY: UnanswerableInputError,
    HTTPStatus.SERVICE_UNAVAILABLE: ServiceUnavailableError,
}


def error_for_status(status: int, message: str, retry_after: float | None = None) -> HTTPStatusError:
    """The exception for an error ``status``: its class from the table above, else :class:`ServerError`
    for 5xx and :class:`BadRequestError` for other 4xx."""
    kind = _CLASS_OF.get(status)
    if kind is None:
        kind = ServerError if status >= HTTPStatus.INTERNAL_SERVER_ERROR else BadRequestError
    return kind(status, message, retry_after)

"""The service's domain errors: what went wrong with a request, in words, without HTTP.

Registry, codec, data plane and inference raise these; :mod:`covserve.service._responses` maps each class
to its HTTP status in one table. Every message names the field, what was expected and what was received.
"""

from __future__ import annotations

__all__ = [
    "ClientGoneError",
    "ForbiddenError",
    "InvalidRequestError",
    "ModelFailureError",
    "NotFoundError",
    "OverloadedError",
    "RequestTimeoutError",
    "ServiceError",
    "TooLargeError",
    "UnanswerableInputError",
]


class ServiceError(Exception):
    """A request the service cannot answer; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(ServiceError):
    """The request is malformed or does not fit the model (a client error)."""


class UnanswerableInputError(InvalidRequestError):
    """Well-formed rows the model cannot answer: its output for them is not finite or not positive
    definite (inputs far outside what it was trained on)."""


class ForbiddenError(ServiceError):
    """The route is switched off for this server (the repository API without admin keys)."""


class RequestTimeoutError(ServiceError):
    """The client did not send its body within the body timeout."""


class ClientGoneError(ServiceError):
    """The client disconnected before its request was read; nobody receives the answer."""


class NotFoundError(ServiceError):
    """The named model, version or route is not served."""


class TooLargeError(ServiceError):
    """The request is over a size limit (body bytes, rows or tensor elements)."""


class OverloadedError(ServiceError):
    """Every worker is busy and the queue is full; the client should retry after ``retry_after_seconds``."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ModelFailureError(ServiceError):
    """The model produced an output the service will not return (non-finite, not positive definite)."""

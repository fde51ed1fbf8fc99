"""The error every route raises for a client-visible failure; the app renders it as ``{"error": ...}``."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """An HTTP error with a message that names the field, what was expected and what was received."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

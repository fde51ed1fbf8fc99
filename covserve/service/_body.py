"""Reading a request body within a byte limit and a deadline, for declared and chunked lengths alike."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from covserve.service._errors import ClientGoneError, InvalidRequestError, RequestTimeoutError, TooLargeError

__all__ = ["declared_length", "read_body"]


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` (``None`` for a chunked upload); :class:`InvalidRequestError` when
    it is not a number."""
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit() or not text.isascii():
        raise InvalidRequestError(f"content-length: expected a number of bytes, got {text[:40]!r}")
    return int(text)


async def read_body(request: Request, limit: int, timeout_seconds: float) -> bytes:
    """The body of ``request``: :class:`TooLargeError` as soon as it passes ``limit`` bytes,
    :class:`RequestTimeoutError` when it is not complete within ``timeout_seconds``, and
    :class:`ClientGoneError` when the client disconnects first.

    Reads the ASGI messages directly (``Request.stream`` is an async generator, a measurable cost on
    small requests).
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_seconds):
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientGoneError(f"body: the client disconnected after {size} bytes")
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise TooLargeError(f"body: at most {limit} bytes for this model, got more")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except TimeoutError:
        raise RequestTimeoutError(
            f"body: not complete within {timeout_seconds:g} s (received {size} bytes)"
        ) from None

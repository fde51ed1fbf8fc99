"""Reading a request body with a byte limit that holds for chunked uploads too."""

from __future__ import annotations

from fastapi import Request

from service._errors import ApiError

__all__ = ["read_body"]


async def read_body(request: Request) -> bytes:
    """The body of ``request``, or 413 as soon as it exceeds ``settings.max_body_bytes``.

    ``Content-Length`` is checked before routing; this also stops a chunked body (which has none) without
    buffering more than the limit.
    """
    limit: int = request.app.state.settings.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: at most {limit} bytes, got more (chunked upload)")
        chunks.append(chunk)
    return b"".join(chunks)

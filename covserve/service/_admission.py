"""Admission before a body is read: a bound on requests in flight and on body bytes held at once, and each
model's own body limit.

A request is admitted (or refused with 503 and ``Retry-After``) as soon as its route names a model, before
a byte of its body is read, and holds its place until its response is ready: reading, parsing, queueing and
inference all count. Its reservation is the declared ``Content-Length``, or the model's body limit for a
chunked upload, so ``--max-buffered-bytes`` bounds the memory that bodies can take. A model's body limit
follows from ``--max-rows`` and its width (:func:`body_limit`): a body larger than the largest valid
request for that model is refused from its declared length, unread.
"""

from __future__ import annotations

from typing import Final

from covserve.service._errors import OverloadedError
from covserve.service._runtime import LoadedModel

__all__ = [
    "BODY_OVERHEAD_BYTES",
    "MAX_NUMBER_BYTES",
    "NAME_FRAMING_BYTES",
    "RETRY_AFTER_SECONDS",
    "Admission",
    "body_limit",
]

MAX_NUMBER_BYTES: Final = 32
"""Bytes one JSON number may take with its separator and some whitespace (``-1.2345678901234567e-308,``
is 25)."""
NAME_FRAMING_BYTES: Final = 6
"""Bytes around a name in ``{"name": value}`` besides the name and the number: quotes, colon, space."""
BODY_OVERHEAD_BYTES: Final = 64 * 1024
"""Room for everything in a request besides its rows (outputs, level, columns, id, parameters)."""
RETRY_AFTER_SECONDS: Final = 1


def body_limit(model: LoadedModel, max_rows: int, max_body_bytes: int) -> int:
    """The largest body a request for ``model`` can need, in bytes, at most ``max_body_bytes``: ``max_rows``
    rows, each with every input and target named (``instances`` and ``observed``, the widest forms)."""
    names = (*model.version.input_names, *model.version.target_names)
    row = sum(len(name.encode()) + NAME_FRAMING_BYTES + MAX_NUMBER_BYTES for name in names)
    return min(max_body_bytes, max_rows * row + BODY_OVERHEAD_BYTES)


class Admission:
    """At most ``requests`` requests in flight and ``buffered_bytes`` of their bodies reserved at once.

    Only touched on the event loop (no lock): :meth:`admit` and :meth:`release` pair in a ``try/finally``.
    """

    def __init__(self, requests: int, buffered_bytes: int) -> None:
        self._capacity = requests
        self._budget = buffered_bytes
        self._requests = 0
        self._reserved = 0

    def admit(self, body_bytes: int) -> None:
        """Take a place and reserve ``body_bytes``, or raise :class:`OverloadedError` (nothing taken)."""
        if self._requests >= self._capacity:
            raise OverloadedError(
                f"server busy: {self._capacity} requests already in flight; retry later", RETRY_AFTER_SECONDS
            )
        if self._reserved + body_bytes > self._budget:
            raise OverloadedError(
                f"server busy: request bodies of {self._reserved} bytes already held, this one's "
                f"{body_bytes} would pass --max-buffered-bytes {self._budget}; retry later",
                RETRY_AFTER_SECONDS,
            )
        self._requests += 1
        self._reserved += body_bytes

    def release(self, body_bytes: int) -> None:
        """Give back a place taken by :meth:`admit` with the same ``body_bytes``."""
        self._requests -= 1
        self._reserved -= body_bytes

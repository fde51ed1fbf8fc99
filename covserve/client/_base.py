"""What :class:`~covserve.client.Client` and :class:`~covserve.client.AsyncClient` share: their
construction, the cached list of served models and how a ``predict`` is planned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from covserve.client._protocol import ClientSettings, ModelInfo, Retry, Transport, choose_transport, rows_of

__all__ = ["ClientBase"]

TransportT = TypeVar("TransportT")
HTTPClientT = TypeVar("HTTPClientT")


class ClientBase(Generic[TransportT, HTTPClientT]):
    """A covserve server at ``url``.

    ``model`` names the model calls use when they name none (otherwise the server's only model);
    ``api_key`` is sent as ``Authorization: Bearer``; ``timeout`` bounds each HTTP exchange, in seconds.
    A 503 (server full) or a connection that cannot be opened is retried ``retries`` times with
    exponential backoff from ``backoff`` seconds, honouring ``Retry-After``; any other error status raises
    its :class:`~covserve.client.HTTPStatusError` subclass at once with the server's message.
    ``transport`` replaces httpx's network transport (e.g. ``httpx.ASGITransport`` for an app in process).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        transport: TransportT | None = None,
    ) -> None:
        self._settings = ClientSettings(url, model, api_key, timeout, Retry(retries, backoff))
        self._served: list[ModelInfo] | None = None
        self._http = self._open(transport)

    def _open(self, transport: TransportT | None) -> HTTPClientT:
        """The httpx client of this kind."""
        raise NotImplementedError

    def _http_options(self) -> dict[str, Any]:
        """The options every httpx client of a covserve client takes."""
        settings = self._settings
        return {
            "base_url": settings.url,
            "headers": settings.headers(),
            "timeout": settings.timeout,
            "trust_env": False,
        }

    def _plan(
        self, x: ArrayLike, model: str | None, outputs: Sequence[str], transport: Transport | str
    ) -> tuple[NDArray[np.float64], Transport, str | None, bool]:
        """A predict's rows (:func:`rows_of`), transport, model name (``None``: the server's only model)
        and whether it needs the model's description (binary, or no name)."""
        rows = rows_of(x)
        chosen = choose_transport(transport, len(rows), outputs)
        name = self._settings.model if model is None else model
        return rows, chosen, name, chosen is Transport.BINARY or name is None

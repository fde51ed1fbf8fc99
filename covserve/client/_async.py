"""The asyncio client, :class:`AsyncClient`, over an ``httpx.AsyncClient``: :class:`~covserve.client.Client`'s
methods as coroutines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

import httpx
from numpy.typing import ArrayLike

from covserve.client._errors import ServiceUnavailableError, TransportError
from covserve.client._protocol import (
    DEFAULT_LEVEL,
    Call,
    ClientSettings,
    ModelInfo,
    Prediction,
    Retry,
    Transport,
    Wait,
    choose_transport,
    condition_call,
    connection_failed,
    models_call,
    predict_call,
    ready_call,
    rows_of,
    settle,
)
from covserve.distribution import PredictiveDistribution

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """A covserve server at ``url``, for asyncio: ``await client.predict(x)``; the parameters and the
    retries are :class:`~covserve.client.Client`'s. Use it as ``async with``, or ``await`` :meth:`aclose`.

    Every coroutine below is the same-named method of :class:`~covserve.client.Client`.

    ``model`` names the model calls use when they name none (otherwise the server's only model);
    ``api_key`` is sent as ``Authorization: Bearer``; ``timeout`` bounds each HTTP exchange, in seconds.
    A 503 (server full) or a connection that cannot be opened is retried ``retries`` times with
    exponential backoff from ``backoff`` seconds, honouring ``Retry-After``; any other error status raises
    its :class:`~covserve.client.HTTPStatusError` subclass at once with the server's message. Use it as a
    context manager, or call :meth:`close`.
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = ClientSettings(url, model, api_key, timeout, Retry(retries, backoff))
        self._http = httpx.AsyncClient(
            base_url=self._settings.url,
            headers=self._settings.headers(),
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )
        self._served: list[ModelInfo] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(self, call: Call[T], *, retries: bool = True) -> T:
        retry, attempt = self._settings.retry, 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, content=call.content, headers=call.headers
                )
                result = settle(call, response, retry, attempt, retries)
            except httpx.HTTPError as error:
                result = connection_failed(self._settings.url + call.path, error, retry, attempt, retries)
            if not isinstance(result, Wait):
                return result
            await asyncio.sleep(result.seconds)
            attempt += 1

    async def models(self) -> list[ModelInfo]:
        """:meth:`Client.models`."""
        self._served = await self._send(models_call())
        return self._served

    async def ready(self, model: str | None = None) -> bool:
        """:meth:`Client.ready`."""
        try:
            return await self._send(ready_call(model), retries=False)
        except ServiceUnavailableError:
            return False

    async def wait_until_ready(
        self, timeout: float = 30.0, model: str | None = None, poll: float = 0.1
    ) -> None:
        """:meth:`Client.wait_until_ready`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if await self.ready(model):
                    return
            except TransportError:
                pass
            await asyncio.sleep(poll)
        raise ServiceUnavailableError(503, f"{self._settings.url} was not ready within {timeout:g} s")

    async def _info(self, model: str | None, version: int | None) -> ModelInfo:
        served = await self.models() if self._settings.needs_refresh(self._served, model) else self._served
        assert served is not None
        return self._settings.model_info(served, model, version)

    async def predict(
        self,
        x: ArrayLike,
        *,
        model: str | None = None,
        version: int | None = None,
        outputs: Sequence[str] = ("mean", "covariance"),
        level: float = DEFAULT_LEVEL,
        transport: Transport | str = Transport.AUTO,
    ) -> Prediction:
        """:meth:`Client.predict`."""
        chosen = choose_transport(transport, len(rows_of(x)), outputs)
        name = self._settings.model if model is None else model
        info = await self._info(model, version) if chosen is Transport.BINARY or name is None else None
        return await self._send(predict_call(x, info, name, version, outputs, level, chosen))

    async def condition(
        self, x: ArrayLike, observed: Mapping[str | int, ArrayLike], *, model: str | None = None
    ) -> PredictiveDistribution:
        """:meth:`Client.condition`."""
        return await self._send(condition_call(x, observed, await self._info(model, None)))

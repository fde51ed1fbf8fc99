"""The asyncio client, :class:`AsyncClient`, over an ``httpx.AsyncClient``: :class:`~covserve.client.Client`'s
methods as coroutines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

import httpx
from numpy.typing import ArrayLike

from covserve.client._base import ClientBase
from covserve.client._errors import ServiceUnavailableError, TransportError
from covserve.client._protocol import (
    DEFAULT_LEVEL,
    Call,
    ModelInfo,
    Prediction,
    Transport,
    Wait,
    condition_call,
    connection_failed,
    models_call,
    predict_call,
    ready_call,
    settle,
)
from covserve.distribution import PredictiveDistribution

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(ClientBase[httpx.AsyncBaseTransport, httpx.AsyncClient]):
    """The asyncio client: ``await client.predict(x)``; the parameters and the retries are
    :class:`ClientBase`'s. Use it as ``async with``, or ``await`` :meth:`aclose`. Every coroutine is the
    same-named method of :class:`~covserve.client.Client`.
    """

    def _open(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=transport, **self._http_options())

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
        rows, chosen, name, described = self._plan(x, model, outputs, transport)
        info = await self._info(model, version) if described else None
        return await self._send(predict_call(x, rows, info, name, version, outputs, level, chosen))

    async def condition(
        self, x: ArrayLike, observed: Mapping[str | int, ArrayLike], *, model: str | None = None
    ) -> PredictiveDistribution:
        """:meth:`Client.condition`."""
        return await self._send(condition_call(x, observed, await self._info(model, None)))

"""The blocking client, :class:`Client`, over an ``httpx.Client``."""

from __future__ import annotations

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

__all__ = ["Client"]

T = TypeVar("T")


class Client(ClientBase[httpx.BaseTransport, httpx.Client]):
    """The blocking client of a covserve server: ``models()``, ``ready()``, ``wait_until_ready()``,
    ``predict()`` and ``condition()``. Its parameters and retries are :class:`ClientBase`'s
    (``Client(url, model=, api_key=, timeout=, retries=, backoff=)``). Use it as a context manager, or
    call :meth:`close`.
    """

    def _open(self, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(transport=transport, **self._http_options())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(self, call: Call[T], *, retries: bool = True) -> T:
        retry, attempt = self._settings.retry, 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, content=call.content, headers=call.headers
                )
                result = settle(call, response, retry, attempt, retries)
            except httpx.HTTPError as error:
                result = connection_failed(self._settings.url + call.path, error, retry, attempt, retries)
            if not isinstance(result, Wait):
                return result
            time.sleep(result.seconds)
            attempt += 1

    def models(self) -> list[ModelInfo]:
        """Every served model version (``GET /v1/models``)."""
        self._served = self._send(models_call())
        return self._served

    def ready(self, model: str | None = None) -> bool:
        """Whether the server (or ``model``) is ready to answer; ``False`` while it is not (never retried)."""
        try:
            return self._send(ready_call(model), retries=False)
        except ServiceUnavailableError:
            return False

    def wait_until_ready(self, timeout: float = 30.0, model: str | None = None, poll: float = 0.1) -> None:
        """Block until :meth:`ready` (the server may still be starting); :class:`ServiceUnavailableError`
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.ready(model):
                    return
            except TransportError:
                pass
            time.sleep(poll)
        raise ServiceUnavailableError(503, f"{self._settings.url} was not ready within {timeout:g} s")

    def _info(self, model: str | None, version: int | None) -> ModelInfo:
        served = self.models() if self._settings.needs_refresh(self._served, model) else self._served
        assert served is not None
        return self._settings.model_info(served, model, version)

    def predict(
        self,
        x: ArrayLike,
        *,
        model: str | None = None,
        version: int | None = None,
        outputs: Sequence[str] = ("mean", "covariance"),
        level: float = DEFAULT_LEVEL,
        transport: Transport | str = Transport.AUTO,
    ) -> Prediction:
        """Predict for the rows ``x`` ``(N, M)`` (or one row ``(M,)``; a DataFrame's columns are checked
        against the model's inputs). ``outputs`` are any of mean, covariance, std, correlation, scale,
        interval (at ``level``) and mahalanobis_ood; ``.distribution`` of the result is the rows'
        :class:`~covserve.PredictiveDistribution`. ``transport`` ``auto`` sends large batches as OIP binary
        tensors."""
        rows, chosen, name, described = self._plan(x, model, outputs, transport)
        info = self._info(model, version) if described else None
        return self._send(predict_call(x, rows, info, name, version, outputs, level, chosen))

    def condition(
        self, x: ArrayLike, observed: Mapping[str | int, ArrayLike], *, model: str | None = None
    ) -> PredictiveDistribution:
        """The distribution of the unobserved targets of each row of ``x`` given ``observed``
        (``{target name or index: value or (N,) values}``), computed by the server's latest version."""
        return self._send(condition_call(x, observed, self._info(model, None)))

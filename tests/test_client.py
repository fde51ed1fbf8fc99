"""The covserve client against real uvicorn servers on 127.0.0.1 (``tests/conftest.py``'s ``serve``).

Numbers are checked against ONNX Runtime sessions on the exported files; retries against a real server
held full by its own batching delay; errors against the server's own messages, counted in its metrics.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from covserve import AsyncClient, Client
from covserve.client import (
    BINARY_MIN_ROWS,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    ServiceUnavailableError,
    TransportError,
)
from covserve.service import Settings
from tests.service_fixtures import running_server

TOLERANCE = 1e-6
KEY = "client-test-key"


def _reference(repository: Path, name: str, version: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(repository / name / str(version) / "model.onnx"))
    mean, covariance = session.run(["mean", "covariance"], {"x": rows.astype(np.float32)})
    return np.asarray(mean, np.float64), np.asarray(covariance, np.float64)


def _rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)) * 2.0 + 1.0


def _requests_counted(url: str, code: str) -> float:
    """``covserve_requests_total`` of every route with status ``code``, from the server's /metrics."""
    text = httpx.get(url + "/metrics", trust_env=False).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("covserve_requests_total{") and f'code="{code}"' in line
    )


@pytest.mark.parametrize("transport", ["json", "binary"])
def test_predict_returns_the_models_numbers_in_numpy(
    serve: Callable[..., str], served_repository: Path, transport: str
) -> None:
    rows = _rows(BINARY_MIN_ROWS, 2)
    with Client(serve()) as client:
        prediction = client.predict(rows, model="beta", transport=transport)
    mean, covariance = _reference(served_repository, "beta", 2, rows)
    assert (prediction.model, prediction.version, prediction.targets) == ("beta", 2, ("y0", "y1", "y2"))
    assert prediction.mean is not None
    assert prediction.covariance is not None
    np.testing.assert_allclose(prediction.mean, mean, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(prediction.covariance, covariance, rtol=TOLERANCE, atol=TOLERANCE)
    distribution = prediction.distribution
    np.testing.assert_allclose(distribution.covariance, covariance, rtol=TOLERANCE, atol=TOLERANCE)
    assert distribution.target_names == ("y0", "y1", "y2")


def test_auto_transport_sends_large_batches_as_binary_and_small_ones_as_json(
    serve: Callable[..., str],
) -> None:
    sent: list[str] = []
    with Client(serve(), model="alpha") as client:
        client._http.event_hooks["request"].append(lambda request: sent.append(request.url.path))
        client.predict(_rows(1, 3))
        client.predict(_rows(BINARY_MIN_ROWS, 3))
        client.predict(_rows(BINARY_MIN_ROWS, 3), outputs=["mean", "interval"])
    infer, predict = "/v2/models/alpha/infer", "/v1/models/alpha/predict"
    assert [path for path in sent if path != "/v1/models"] == [predict, infer, predict]


def test_every_output_a_version_and_named_columns(serve: Callable[..., str], served_repository: Path) -> None:
    rows = _rows(4, 2, seed=1)
    outputs = ["mean", "covariance", "std", "correlation", "scale", "interval", "mahalanobis_ood"]
    with Client(serve()) as client:
        prediction = client.predict(rows, model="beta", version=1, outputs=outputs, level=0.5)
    _, covariance = _reference(served_repository, "beta", 1, rows)
    assert prediction.version == 1
    assert prediction.interval is not None
    assert prediction.level == 0.5
    lower, upper = prediction.interval
    want_lower, want_upper = prediction.distribution.interval(0.5)
    np.testing.assert_allclose(lower, want_lower, rtol=1e-9)
    np.testing.assert_allclose(upper, want_upper, rtol=1e-9)
    assert prediction.std is not None
    np.testing.assert_allclose(prediction.std, np.sqrt(np.diagonal(covariance, axis1=1, axis2=2)), rtol=1e-6)
    assert prediction.mahalanobis_ood is not None
    assert prediction.mahalanobis_ood.shape == (4,)
    assert prediction.scale is not None
    np.testing.assert_allclose(
        prediction.scale @ np.swapaxes(prediction.scale, 1, 2), covariance, rtol=1e-5, atol=1e-6
    )


def test_models_readiness_and_the_only_model_default(
    serve: Callable[..., str], alpha_repository: Path
) -> None:
    with Client(serve()) as client:
        assert client.ready()
        assert client.ready("alpha")
        models = {(info.name, info.version): info for info in client.models()}
        assert set(models) == {("alpha", 1), ("beta", 1), ("beta", 2)}
        assert models["beta", 2].targets == ("y0", "y1", "y2")
        with pytest.raises(ValueError, match=r"serves \['alpha', 'beta'\]; name one"):
            client.predict(_rows(1, 2))
    with running_server(Settings(repository=alpha_repository, threads=1)) as url, Client(url) as client:
        assert client.predict(_rows(2, 3)).model == "alpha"


def test_condition_matches_the_local_distribution(serve: Callable[..., str]) -> None:
    rows = _rows(3, 3, seed=2)
    observed = np.array([0.5, -1.0, 2.0])
    with Client(serve(), model="alpha") as client:
        conditional = client.condition(rows, {"y1": observed})
        local = client.predict(rows).distribution.condition({1: observed})
    assert conditional.target_names == local.target_names == ("y0",)
    np.testing.assert_allclose(conditional.mean, local.mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(conditional.covariance, local.covariance, rtol=1e-9, atol=1e-9)


def test_a_400_is_raised_at_once_with_the_servers_message(serve: Callable[..., str]) -> None:
    url = serve()
    before = _requests_counted(url, "400")
    with Client(url, backoff=5.0) as client:
        started = time.monotonic()
        with pytest.raises(BadRequestError) as caught:
            client.predict(_rows(2, 5), model="alpha")
        elapsed = time.monotonic() - started
    assert caught.value.status == 400
    assert caught.value.message == "inputs: expected rows of 3 features ['x0', 'x1', 'x2'], got widths [5]"
    assert elapsed < 5.0  # no backoff was slept
    assert _requests_counted(url, "400") == before + 1  # one request: never retried
    with Client(url) as client, pytest.raises(NotFoundError, match=r"HTTP 404: .*'gamma'"):
        client.predict(_rows(1, 2), model="gamma", transport="json")


def test_a_503_with_retry_after_is_retried_until_the_server_has_room(served_repository: Path) -> None:
    """One worker and a queue of one, each request held 1.5 s by the batching delay: the server is full
    while two requests wait, and answers the client's next one 503 with ``Retry-After: 1``."""
    settings = Settings(
        repository=served_repository, threads=1, workers=1, max_queue=1, max_queue_delay_ms=1500.0
    )
    rows = _rows(1, 3)
    with running_server(settings) as url:
        holders = [
            threading.Thread(
                target=lambda: httpx.post(
                    url + "/v1/models/alpha/predict",
                    json={"inputs": rows.tolist()},
                    timeout=30,
                    trust_env=False,
                )
            )
            for _ in range(2)
        ]
        for holder in holders:
            holder.start()
        deadline = time.monotonic() + 10
        while _in_flight(url) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        impatient = Client(url, model="alpha", retries=0)
        with impatient, pytest.raises(ServiceUnavailableError) as full:
            impatient.predict(rows)
        assert full.value.retry_after == 1.0
        refused = _requests_counted(url, "503")
        started = time.monotonic()
        with Client(url, model="alpha", retries=5, backoff=0.01) as client:
            prediction = client.predict(rows)
        elapsed = time.monotonic() - started
        for holder in holders:
            holder.join()
        retried = _requests_counted(url, "503") - refused
    assert prediction.mean is not None
    assert prediction.mean.shape == (1, 2)
    assert retried >= 1  # refused at least once, then answered
    assert elapsed >= retried * 1.0  # each retry waited the server's Retry-After, not the 10 ms backoff


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", trust_env=False).text
    lines = [line for line in text.splitlines() if line.startswith("covserve_inflight_requests")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_api_keys_and_an_unreachable_server(served_repository: Path) -> None:
    with running_server(Settings(repository=served_repository, threads=1, api_keys=[KEY])) as url:
        with Client(url, model="alpha") as anonymous, pytest.raises(AuthenticationError) as refused:
            anonymous.predict(_rows(1, 3))
        assert refused.value.status == 401
        with Client(url, model="alpha", api_key=KEY) as client:
            assert client.predict(_rows(1, 3)).mean is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with Client(f"127.0.0.1:{closed}", retries=2, backoff=0.01) as client:
        with pytest.raises(TransportError, match=r"127\.0\.0\.1"):
            client.models()
        with pytest.raises(TransportError):
            client.ready()
        with pytest.raises(ServiceUnavailableError, match=r"not ready within 0\.2 s"):
            client.wait_until_ready(timeout=0.2)
    with pytest.raises(ValueError, match="x: row 1 holds a NaN"):
        Client("127.0.0.1:1").predict(np.array([[0.0, 1.0, 2.0], [np.nan, 0.0, 0.0]]), model="alpha")


def test_async_client_gives_the_same_answers(serve: Callable[..., str], served_repository: Path) -> None:
    rows = _rows(BINARY_MIN_ROWS, 3, seed=5)

    async def scenario() -> tuple[np.ndarray | None, np.ndarray, bool]:
        async with AsyncClient(serve(), model="alpha") as client:
            ready = await client.ready()
            binary, single = await asyncio.gather(client.predict(rows), client.predict(rows[:1]))
            conditional = await client.condition(rows[:1], {"y0": 0.0})
            assert single.mean is not None
            np.testing.assert_allclose(single.mean, binary.mean[:1], rtol=1e-6)  # type: ignore[index]
            return binary.covariance, conditional.mean, ready

    covariance, conditional_mean, ready = asyncio.run(scenario())
    assert ready
    assert conditional_mean.shape == (1, 1)
    _, want = _reference(served_repository, "alpha", 1, rows)
    np.testing.assert_allclose(covariance, want, rtol=TOLERANCE, atol=TOLERANCE)  # type: ignore[arg-type]

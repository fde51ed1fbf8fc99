"""Dynamic micro-batching: merged runs give every request its own rows' numbers, within the batch bound.

The executor is driven directly (real ONNX Runtime sessions, real asyncio) where the test needs to control
the arrival of requests, and through a real uvicorn server with the unmodified ``tritonclient.http.aio``
where it checks the protocol path end to end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http.aio as triton_aio
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from covserve.service import Settings
from covserve.service._inference import Inference, Outcome
from covserve.service._metrics import LOG_DET_BUCKETS, ArrayHistogram, ServiceMetrics
from covserve.service._registry import ServedModels
from covserve.service._runtime import LoadedModel
from tests.service_fixtures import running_server

TOLERANCE = 1e-6
REQUESTS = 12
DELAY_MS = 300.0
LONG_DELAY_MS = 10_000.0


@pytest.fixture(scope="module")
def repository(served_repository: Path) -> Path:
    """alpha (3 → 2) and beta (2 → 3, latest version 2)."""
    return served_repository


def _served(repository: Path, **overrides: float | bool) -> tuple[Settings, ServedModels, ServiceMetrics]:
    settings = Settings(repository=repository, threads=1, **overrides)  # type: ignore[arg-type]
    metrics = ServiceMetrics()
    models = ServedModels(settings, metrics)
    models.refresh()
    return settings, models, metrics


def _reference(repository: Path, name: str, inputs: np.ndarray) -> list[np.ndarray]:
    """``mean`` and ``covariance`` straight from a fresh ONNX Runtime session (float32 in, float32 out)."""
    latest = max(int(version.name) for version in (repository / name).iterdir())
    session = ort.InferenceSession(str(repository / name / str(latest) / "model.onnx"))
    outputs = session.run(["mean", "covariance"], {"x": inputs.astype(np.float32)})
    return [np.asarray(output, dtype=np.float64) for output in outputs]


def _requests(in_dim: int, seed: int) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    return [generator.normal(size=(int(rows), in_dim)) * 2.0 for rows in generator.integers(1, 5, REQUESTS)]


async def _concurrently(
    inference: Inference, model: LoadedModel, requests: list[np.ndarray]
) -> list[Outcome]:
    try:
        return list(await asyncio.gather(*(inference.run(model, model.checked(rows)) for rows in requests)))
    finally:
        inference.shutdown()


def _batch_sizes(metrics: ServiceMetrics, name: str) -> tuple[float, float]:
    """``(runs, rows)`` counted by ``covserve_batch_size{model=name}``."""
    runs = metrics.registry.get_sample_value("covserve_batch_size_count", {"model": name})
    rows = metrics.registry.get_sample_value("covserve_batch_size_sum", {"model": name})
    assert runs is not None
    assert rows is not None
    return runs, rows


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_merged_runs_split_back_to_each_request(repository: Path, name: str) -> None:
    settings, models, metrics = _served(repository, max_queue_delay_ms=DELAY_MS, max_batch_size=1000)
    model = models.get(name)
    requests = _requests(model.version.in_dim, seed=len(name))

    async def scenario() -> list[Outcome]:
        return await _concurrently(Inference(settings, metrics), model, requests)

    outcomes = asyncio.run(scenario())
    for rows, outcome in zip(requests, outcomes, strict=True):
        mean, covariance = _reference(repository, name, rows)
        assert outcome.prediction.mean.shape == mean.shape
        np.testing.assert_allclose(outcome.prediction.mean, mean, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_allclose(outcome.prediction.covariance, covariance, rtol=TOLERANCE, atol=TOLERANCE)
        assert outcome.batch_rows == sum(len(r) for r in requests)
    runs, total = _batch_sizes(metrics, name)
    assert (runs, total) == (1, sum(len(r) for r in requests))


def test_batching_off_runs_every_request_alone(repository: Path) -> None:
    settings, models, metrics = _served(repository, batching=False)
    model = models.get("alpha")
    requests = _requests(3, seed=7)

    async def scenario() -> list[Outcome]:
        return await _concurrently(Inference(settings, metrics), model, requests)

    outcomes = asyncio.run(scenario())
    assert [outcome.batch_rows for outcome in outcomes] == [len(rows) for rows in requests]
    assert _batch_sizes(metrics, "alpha") == (REQUESTS, sum(len(r) for r in requests))


def test_by_default_requests_arriving_while_the_workers_are_busy_share_the_next_run(
    repository: Path,
) -> None:
    """One worker, held by a large first request; eleven requests that arrive while it runs wait and are
    merged into one run when it comes free, each getting its own rows' numbers."""
    settings, models, metrics = _served(repository, workers=1)
    assert settings.batching
    assert settings.max_queue_delay_ms == 0
    model = models.get("alpha")
    first = np.random.default_rng(2).normal(size=(settings.max_batch_size, 3))
    requests = _requests(3, seed=3)[1:]

    async def scenario() -> list[Outcome]:
        inference = Inference(settings, metrics)
        try:
            running = asyncio.ensure_future(inference.run(model, model.checked(first)))
            while inference.idle_workers:  # the first request's run has started
                await asyncio.sleep(0)
            later = [inference.run(model, model.checked(rows)) for rows in requests]
            return list(await asyncio.gather(running, *later))
        finally:
            inference.shutdown()

    outcomes = asyncio.run(scenario())
    rest = sum(len(rows) for rows in requests)
    assert [outcome.batch_rows for outcome in outcomes] == [len(first)] + [rest] * len(requests)
    assert _batch_sizes(metrics, "alpha") == (2, len(first) + rest)
    for rows, outcome in zip([first, *requests], outcomes, strict=True):
        mean, covariance = _reference(repository, "alpha", rows)
        np.testing.assert_allclose(outcome.prediction.mean, mean, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_allclose(outcome.prediction.covariance, covariance, rtol=TOLERANCE, atol=TOLERANCE)


def test_requests_arriving_together_are_merged_up_to_the_batch_size(repository: Path) -> None:
    settings, models, metrics = _served(repository, workers=2, max_batch_size=4)
    model = models.get("alpha")
    requests = [np.full((1, 3), float(i)) for i in range(10)]

    async def scenario() -> list[Outcome]:
        return await _concurrently(Inference(settings, metrics), model, requests)

    outcomes = asyncio.run(scenario())
    # the two workers take four each; the last two wait for the first worker to come free
    assert [outcome.batch_rows for outcome in outcomes] == [4] * 8 + [2] * 2
    assert _batch_sizes(metrics, "alpha") == (3, 10)


def test_two_models_share_the_workers_oldest_queue_first(repository: Path) -> None:
    settings, models, metrics = _served(repository, workers=1)
    alpha, beta = models.get("alpha"), models.get("beta")

    async def scenario() -> list[Outcome]:
        inference = Inference(settings, metrics)
        try:
            runs = [
                inference.run(alpha, alpha.checked(np.zeros((1, 3)))),
                inference.run(beta, beta.checked(np.zeros((2, 2)))),
                inference.run(alpha, alpha.checked(np.ones((3, 3)))),
                inference.run(beta, beta.checked(np.ones((1, 2)))),
            ]
            return list(await asyncio.gather(*runs))
        finally:
            inference.shutdown()

    outcomes = asyncio.run(scenario())
    # alpha's queue is the older: its two requests run first, then beta's two
    assert [outcome.batch_rows for outcome in outcomes] == [4, 3, 4, 3]
    assert outcomes[0].queue_seconds < outcomes[1].queue_seconds
    assert _batch_sizes(metrics, "alpha") == (1, 4)
    assert _batch_sizes(metrics, "beta") == (1, 3)


def test_a_lone_request_runs_without_waiting_by_default(repository: Path) -> None:
    settings, models, metrics = _served(repository)
    model = models.get("beta")

    async def scenario() -> list[Outcome]:
        return await _concurrently(Inference(settings, metrics), model, [np.zeros((2, 2))])

    (outcome,) = asyncio.run(scenario())
    # no timer: the run starts on the next turns of the event loop (the bound only allows for a loaded
    # machine's thread wake-up; with --max-queue-delay-ms the same request waits the delay, tested below)
    assert outcome.queue_seconds < 0.05
    assert outcome.batch_rows == 2


def test_a_full_batch_does_not_wait_for_the_delay(repository: Path) -> None:
    settings, models, metrics = _served(repository, max_queue_delay_ms=LONG_DELAY_MS, max_batch_size=4)
    model = models.get("alpha")
    requests = [np.full((1, 3), float(i)) for i in range(8)]

    async def scenario() -> tuple[list[Outcome], float]:
        started = time.perf_counter()
        outcomes = await _concurrently(Inference(settings, metrics), model, requests)
        return outcomes, time.perf_counter() - started

    outcomes, seconds = asyncio.run(scenario())
    assert [outcome.batch_rows for outcome in outcomes] == [4] * 8
    assert seconds < LONG_DELAY_MS / 1000.0 / 2
    assert _batch_sizes(metrics, "alpha") == (2, 8)


def test_a_request_larger_than_the_batch_runs_alone_and_flushes_the_waiting_ones(repository: Path) -> None:
    settings, models, metrics = _served(repository, max_queue_delay_ms=LONG_DELAY_MS, max_batch_size=4)
    model = models.get("alpha")
    requests = [np.zeros((1, 3)), np.ones((6, 3))]

    async def scenario() -> list[Outcome]:
        return await _concurrently(Inference(settings, metrics), model, requests)

    outcomes = asyncio.run(scenario())
    assert [outcome.batch_rows for outcome in outcomes] == [1, 6]


def test_a_lone_request_waits_the_delay_and_not_much_longer(repository: Path) -> None:
    settings, models, metrics = _served(repository, max_queue_delay_ms=DELAY_MS)
    model = models.get("beta")

    async def scenario() -> list[Outcome]:
        return await _concurrently(Inference(settings, metrics), model, [np.zeros((2, 2))])

    (outcome,) = asyncio.run(scenario())
    delay = DELAY_MS / 1000.0
    # the timer fires no earlier than the delay; the generous ceiling only catches a missed timer
    assert delay * 0.95 <= outcome.queue_seconds < delay + 2.0
    assert outcome.batch_rows == 2


def test_tritonclient_aio_gets_the_unbatched_numbers_through_a_batching_server(repository: Path) -> None:
    settings = Settings(repository=repository, threads=1, max_queue_delay_ms=50.0, max_batch_size=64)
    generator = np.random.default_rng(11)
    requests = [generator.normal(size=(int(rows), 2)).astype(np.float32) for rows in (1, 3, 2, 5, 1, 4)]
    with running_server(settings) as url:

        async def scenario() -> list[np.ndarray]:
            client = triton_aio.InferenceServerClient(url.removeprefix("http://"))
            try:

                async def one(rows: np.ndarray) -> np.ndarray:
                    tensor = triton_aio.InferInput("x", list(rows.shape), "FP32")
                    tensor.set_data_from_numpy(rows, binary_data=True)
                    outputs = [triton_aio.InferRequestedOutput("covariance", binary_data=True)]
                    result = await client.infer("beta", [tensor], outputs=outputs)
                    covariance: np.ndarray = result.as_numpy("covariance")
                    return covariance

                return list(await asyncio.gather(*(one(rows) for rows in requests)))
            finally:
                await client.close()

        covariances = asyncio.run(scenario())
    for rows, covariance in zip(requests, covariances, strict=True):
        _, want = _reference(repository, "beta", rows)
        np.testing.assert_allclose(covariance, want, rtol=TOLERANCE, atol=TOLERANCE)


def test_array_histogram_matches_prometheus_client_histogram() -> None:
    """Bounds are inclusive (``le``), calls accumulate, and non-finite values are not counted."""
    values = np.concatenate([np.random.default_rng(5).normal(scale=30.0, size=500), LOG_DET_BUCKETS])
    ours = CollectorRegistry()
    histogram_of_arrays = ArrayHistogram("log_det", "test", "model", LOG_DET_BUCKETS, ours)
    histogram_of_arrays.observe("m", values[:300])
    histogram_of_arrays.observe("m", np.concatenate([values[300:], [np.nan, np.inf, -np.inf]]))
    reference = CollectorRegistry()
    histogram = Histogram("log_det", "test", ["model"], buckets=LOG_DET_BUCKETS, registry=reference)
    for value in values:
        histogram.labels("m").observe(float(value))
    want = [
        line
        for line in generate_latest(reference).decode().splitlines()
        if "_bucket" in line or "_count" in line
    ]
    got = generate_latest(ours).decode().splitlines()
    assert [line for line in got if "_bucket" in line or "_count" in line] == want
    total = ours.get_sample_value("log_det_sum", {"model": "m"})
    assert total == pytest.approx(float(values.sum()), rel=1e-12)

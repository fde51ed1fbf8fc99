"""Inference off the event loop: a bounded queue, optional dynamic micro-batching, checks and monitors.

Every request becomes a :class:`_Waiting` entry. With batching off (``max_queue_delay_ms = 0``) each entry
is run alone. With batching on, entries for the same model version wait at most ``max_queue_delay_ms`` for
company; a batch is dispatched as soon as it holds ``max_batch_size`` rows or the delay since its first
entry has passed, so a request waits at most the delay plus the run it joins (plus the runs ahead of it
when every worker is busy). A dispatched batch is concatenated into one ``session.run`` on a worker
thread, checked (finite means, symmetric positive definite covariances), fed to the uncertainty monitors
and split back row-for-row to its requests. The inputs' Mahalanobis distance to the training inputs is
computed once per run, for the monitor and for each request's :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from covserve.service import gaussian
from covserve.service._errors import UnanswerableInputError
from covserve.service._metrics import ServiceMetrics
from covserve.service._runtime import LoadedModel, Prediction
from covserve.service._settings import Settings

__all__ = ["Inference", "Outcome"]

MILLISECONDS = 1000.0


class Outcome(NamedTuple):
    """One request's share of a run: its rows' prediction and input Mahalanobis distances ``(B,)``, seconds
    queued, seconds of the whole run, and the rows in that run (a named tuple: cheap to make per request)."""

    prediction: Prediction
    input_mahalanobis: NDArray[np.float64]
    queue_seconds: float
    compute_seconds: float
    batch_rows: int


@dataclass
class _Waiting:
    inputs: NDArray[np.float32]
    future: asyncio.Future[Outcome]
    enqueued: float = field(default_factory=time.perf_counter)


class _Batcher:
    """Collects concurrent requests for one model version until the batch is full or the delay is over."""

    def __init__(self, inference: Inference, model: LoadedModel) -> None:
        self._inference = inference
        self._model = model
        self._waiting: list[_Waiting] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, entry: _Waiting) -> None:
        rows = len(entry.inputs)
        limit = self._inference.max_batch_rows
        if self._waiting and self._rows + rows > limit:
            self._dispatch()
        self._waiting.append(entry)
        self._rows += rows
        if self._rows >= limit:
            self._dispatch()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._inference.delay_seconds, self._dispatch)

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting, self._rows = self._waiting, [], 0
        if batch:
            self._inference.start(self._model, batch)


class Inference:
    """Runs models off the event loop on ``workers`` threads, at most ``workers + max_queue`` requests."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.max_batch_rows = settings.max_batch_size
        self.delay_seconds = settings.max_queue_delay_ms / MILLISECONDS
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="covserve-infer")
        self._metrics = metrics
        self._batchers: weakref.WeakKeyDictionary[LoadedModel, _Batcher] = weakref.WeakKeyDictionary()
        self._running: set[asyncio.Task[None]] = set()

    @property
    def batching(self) -> bool:
        """Whether concurrent requests are merged (a positive ``max_queue_delay_ms``)."""
        return self.delay_seconds > 0

    async def run(self, model: LoadedModel, inputs: NDArray[np.float32]) -> Outcome:
        """Predict raw-unit ``inputs`` ``(B, M)``, as returned by ``model.checked``, with ``model``.

        Admission (how many requests may wait) is the data plane's
        (:class:`~covserve.service._admission.Admission`). Raises :class:`UnanswerableInputError` when the
        model returns a non-finite mean or a covariance that is not symmetric positive definite for a row.
        """
        entry = _Waiting(inputs, asyncio.get_running_loop().create_future())
        if self.batching:
            batcher = self._batchers.get(model)
            if batcher is None:
                batcher = self._batchers[model] = _Batcher(self, model)
            batcher.add(entry)
        else:
            self.start(model, [entry])
        return await entry.future

    def start(self, model: LoadedModel, batch: list[_Waiting]) -> None:
        """Run ``batch`` as one ``session.run`` in the background and resolve its futures."""
        task = asyncio.get_running_loop().create_task(self._execute(model, batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, model: LoadedModel, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([entry.inputs for entry in batch])
        try:
            started, finished, prediction, healthy, distances = await loop.run_in_executor(
                self._executor, self._predict, model, inputs
            )
        except Exception as error:  # every waiting request must learn of the failure
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        name = model.version.name
        self._metrics.inference_duration.labels(name).observe(finished - started)
        self._metrics.batch_size.labels(name).observe(len(inputs))
        waits = [started - entry.enqueued for entry in batch]
        self._metrics.queue_duration.observe(name, np.asarray(waits))
        offset = 0
        for entry, wait in zip(batch, waits, strict=True):
            rows = slice(offset, offset + len(entry.inputs))
            offset = rows.stop
            if entry.future.done():  # the client went away
                continue
            if not healthy[rows].all():
                row = int(np.argmin(healthy[rows]))
                distance = float(distances[rows][row])
                entry.future.set_exception(
                    UnanswerableInputError(
                        f"inputs[{row}]: model {name!r} cannot answer this row: its mean or covariance "
                        f"overflows (the row is at Mahalanobis distance {distance:.3g} from the training "
                        "inputs, far outside them)"
                    )
                )
                continue
            share = Prediction(
                mean=prediction.mean[rows],
                covariance=prediction.covariance[rows],
                scale=prediction.scale[rows],
            )
            entry.future.set_result(Outcome(share, distances[rows], wait, finished - started, len(inputs)))

    def _predict(
        self, model: LoadedModel, inputs: NDArray[np.float32]
    ) -> tuple[float, float, Prediction, NDArray[np.bool_], NDArray[np.float64]]:
        """Worker thread: run, check every row, feed the monitors.

        Returns ``(started, finished, prediction, healthy (B,), input Mahalanobis distances (B,))``.
        """
        started = time.perf_counter()
        prediction = model.run_checked(inputs)
        finished = time.perf_counter()
        positive_definite, log_det = gaussian.log_det_if_positive_definite(prediction.covariance)
        healthy = positive_definite & np.isfinite(prediction.mean).all(-1)
        name = model.version.name
        self._metrics.predicted_log_det.observe(name, log_det[healthy])
        distances = gaussian.mahalanobis(
            inputs, model.version.training_mean, model.version.training_precision
        )
        self._metrics.input_mahalanobis.observe(name, distances)
        return started, finished, prediction, healthy, distances

    def shutdown(self) -> None:
        """Wait for running inferences and stop the worker threads."""
        self._executor.shutdown(wait=True)

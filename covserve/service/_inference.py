"""Inference off the event loop: a bounded queue, dynamic micro-batching, checks and monitors.

Every request becomes a :class:`_Waiting` entry. With batching off (``--no-batching``) each entry is run
alone as soon as it arrives (runs beyond ``workers`` wait for a thread). With batching on (the default) at
most ``workers`` runs are in flight, and entries for the same model version that arrive while every worker
is busy wait in that version's :class:`_Queue`; a worker that comes free takes the oldest queue's entries,
up to ``max_batch_size`` rows (a larger request runs alone), into its next run. A request that finds a
free worker runs at once, without a timer: the dispatch waits only for the event loop to go round twice
(:data:`DISPATCH_TURNS`), microseconds when the server is idle, so that requests whose bytes arrived in
the same turns share the run. Merging thus happens exactly when the server is busy.
``max_queue_delay_ms > 0`` additionally holds a queue until it has ``max_batch_size`` rows or its oldest
entry has waited that long, for users who want fuller batches at some latency.

A run is concatenated into one ``session.run`` on a worker thread, checked (finite means, symmetric positive
definite covariances), fed to the uncertainty monitors and split back row-for-row to its requests. The
inputs' Mahalanobis distance to the training inputs is computed once per run, for the monitor and for each
request's :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from covserve import gaussian
from covserve.service._errors import UnanswerableInputError
from covserve.service._metrics import ServiceMetrics
from covserve.service._runtime import LoadedModel, Prediction
from covserve.service._settings import Settings

__all__ = ["Inference", "Outcome"]

MILLISECONDS = 1000.0

DISPATCH_TURNS = 2
"""Event-loop turns between a request joining a queue and the dispatch that gives it a free worker: the
rest of this turn, then one more, whose poll delivers the requests already on the wire. On 2 cores (one
for the server), single-row OIP requests at concurrency 64 got 0.94× the requests/s of a 2 ms batching
delay when dispatched on the next turn, 1.04–1.07× after two turns and no more after three or four, with
no change in the latency of a lone request (``benchmarks/results/README.md``, batching)."""


class Outcome(NamedTuple):
    """One request's share of a run: its rows' prediction and input Mahalanobis distances ``(B,)``, seconds
    queued, seconds of the whole run, and the rows in that run (a named tuple: cheap to make per request)."""

    prediction: Prediction
    input_mahalanobis: NDArray[np.float64]
    queue_seconds: float
    compute_seconds: float
    batch_rows: int


def _after_turns(loop: asyncio.AbstractEventLoop, turns: int, callback: Callable[[], None]) -> None:
    """Call ``callback`` on the ``turns``-th turn of ``loop`` from now (1: at the end of this one)."""
    if turns <= 1:
        loop.call_soon(callback)
    else:
        loop.call_soon(_after_turns, loop, turns - 1, callback)


@dataclass
class _Waiting:
    inputs: NDArray[np.float32]
    future: asyncio.Future[Outcome]
    enqueued: float = field(default_factory=time.perf_counter)


class _Queue:
    """The entries of one model version waiting for a worker, oldest first."""

    def __init__(self) -> None:
        self.entries: deque[_Waiting] = deque()
        self.rows = 0
        self.due = False
        """Whether the oldest entry has waited ``max_queue_delay_ms`` (always, without a delay)."""
        self.timer: asyncio.TimerHandle | None = None

    def take(self, max_rows: int) -> list[_Waiting]:
        """The oldest entries holding at most ``max_rows`` rows together; at least one entry."""
        batch = [self.entries.popleft()]
        rows = len(batch[0].inputs)
        while self.entries and rows + len(self.entries[0].inputs) <= max_rows:
            rows += len(self.entries[0].inputs)
            batch.append(self.entries.popleft())
        self.rows -= rows
        return batch

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Inference:
    """Runs models off the event loop on ``workers`` threads, at most ``workers + max_queue`` requests."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.batching = settings.batching
        self.max_batch_rows = settings.max_batch_size
        self.delay_seconds = settings.max_queue_delay_ms / MILLISECONDS
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="covserve-infer")
        self._idle_workers = settings.workers
        self._metrics = metrics
        self._queues: dict[LoadedModel, _Queue] = {}
        """Versions with waiting entries, in the order their oldest entry arrived."""
        self._running: set[asyncio.Task[None]] = set()
        self._dispatch_scheduled = False

    @property
    def idle_workers(self) -> int:
        """Workers without a run (with batching on; batching off does not count them)."""
        return self._idle_workers

    async def run(self, model: LoadedModel, inputs: NDArray[np.float32]) -> Outcome:
        """Predict raw-unit ``inputs`` ``(B, M)``, as returned by ``model.checked``, with ``model``.

        Admission (how many requests may wait) is the data plane's
        (:class:`~covserve.service._admission.Admission`). Raises :class:`UnanswerableInputError` when the
        model returns a non-finite mean or a covariance that is not symmetric positive definite for a row.
        """
        entry = _Waiting(inputs, asyncio.get_running_loop().create_future())
        if not self.batching:
            self.start(model, [entry], holds_worker=False)
            return await entry.future
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _Queue()
        queue.entries.append(entry)
        queue.rows += len(inputs)
        if len(queue.entries) == 1:
            self._arm(queue, self.delay_seconds)
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            _after_turns(asyncio.get_running_loop(), DISPATCH_TURNS, self._dispatch)
        return await entry.future

    def _arm(self, queue: _Queue, seconds: float) -> None:
        """Mark ``queue`` due after ``seconds`` (at once without a delay)."""
        queue.cancel_timer()
        if seconds <= 0:
            queue.due = True
            return
        queue.due = False

        def expire() -> None:
            queue.timer = None
            queue.due = True
            self._dispatch()

        queue.timer = asyncio.get_running_loop().call_later(seconds, expire)

    def _dispatch(self) -> None:
        """Give every idle worker a run: the oldest queue that is due or holds a full batch."""
        self._dispatch_scheduled = False
        while self._idle_workers > 0:
            ready = next(
                (
                    (model, queue)
                    for model, queue in self._queues.items()
                    if queue.due or queue.rows >= self.max_batch_rows
                ),
                None,
            )
            if ready is None:
                return
            model, queue = ready
            batch = queue.take(self.max_batch_rows)
            if queue.entries:
                waited = time.perf_counter() - queue.entries[0].enqueued
                self._arm(queue, self.delay_seconds - waited)
            else:
                queue.cancel_timer()
                del self._queues[model]
            self._idle_workers -= 1
            self.start(model, batch, holds_worker=True)

    def start(self, model: LoadedModel, batch: list[_Waiting], *, holds_worker: bool) -> None:
        """Run ``batch`` as one ``session.run`` in the background and resolve its futures; a run that
        ``holds_worker`` gives its worker back to the queues when it ends."""
        task = asyncio.get_running_loop().create_task(self._execute(model, batch, holds_worker))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, model: LoadedModel, batch: list[_Waiting], holds_worker: bool) -> None:
        try:
            await self._run_batch(model, batch)
        finally:
            if holds_worker:
                self._idle_workers += 1
                self._dispatch()

    async def _run_batch(self, model: LoadedModel, batch: list[_Waiting]) -> None:
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

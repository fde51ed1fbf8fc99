"""Shared helpers for the service tests: a real model repository, a real uvicorn server, and the same app
in this process (``httpx.ASGITransport``) where a socket adds nothing to what a test checks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import torch
import uvicorn

from covserve.service import Settings, create_app
from covserve.service._connections import uvicorn_config
from covserve.training.export import ModelCard, export_model
from covserve.training.networks import Standardisation
from tests.random_models import random_model

STARTUP_TIMEOUT_SECONDS = 60.0


def export_tiny_model(
    repository: Path, name: str, in_dim: int, out_dim: int, kind: str, seed: int, input_scale: float = 3.0
) -> Path:
    """Train-free export of a small random model (BatchNorm statistics warmed on random rows), trained on
    inputs of standard deviation ``input_scale``."""
    generator = np.random.default_rng(seed)
    inputs = generator.normal(size=(200, in_dim)) * input_scale + 1.0
    targets = inputs[:, :1] * generator.normal(size=(1, out_dim)) + generator.normal(size=(200, out_dim))
    torch.manual_seed(seed)
    model = random_model(in_dim, out_dim, kind, Standardisation.fit(inputs, targets), width=16, depth=1)
    model.train()
    with torch.no_grad():
        model.predict(model.standardise_inputs(torch.as_tensor(inputs, dtype=torch.float32)))
    model.eval()
    card = ModelCard(
        name=name,
        method="w2-bound" if kind == "sqrt" else "nll",
        input_names=tuple(f"x{i}" for i in range(in_dim)),
        target_names=tuple(f"y{i}" for i in range(out_dim)),
        data_description="random test data",
        split_sizes={"train": 200, "validation": 0, "test": 0},
        test_metrics={"nll": 1.0},
        training_input_mean=inputs.mean(axis=0),
        training_input_covariance=np.atleast_2d(np.cov(inputs, rowvar=False)),
    )
    return export_model(model, card, repository, inputs[:16])


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 with a free port, in a thread; yields its base URL."""
    local = settings.model_copy(update={"host": "127.0.0.1", "port": 0})
    server = uvicorn.Server(uvicorn_config(create_app(settings), local, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


Result = TypeVar("Result")


class InProcessClient:
    """Blocking ``get``/``post``/``request`` against an app served by ``httpx.ASGITransport`` on an event
    loop in a background thread, with the app's lifespan (models loaded) around it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop = loop
        self._client = client

    def _call(self, work: Coroutine[Any, Any, Result]) -> Result:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=STARTUP_TIMEOUT_SECONDS)

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        return self._call(self._client.request(method, path, **options))

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)


@contextmanager
def in_process_client(settings: Settings) -> Iterator[InProcessClient]:
    """``create_app(settings)`` in this process, its lifespan run; yields a blocking client of it."""
    app = create_app(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = threading.Event()
    stop = asyncio.Event()
    clients: list[InProcessClient] = []

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://covserve") as client:
                clients.append(InProcessClient(loop, client))
                started.set()
                await stop.wait()

    served = asyncio.run_coroutine_threadsafe(serve(), loop)
    try:
        if not started.wait(STARTUP_TIMEOUT_SECONDS):
            raise RuntimeError("the in-process app did not start")
        yield clients[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        served.result(timeout=STARTUP_TIMEOUT_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=STARTUP_TIMEOUT_SECONDS)
        loop.close()

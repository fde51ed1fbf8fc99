"""Shared fixtures for the service tests: a real model repository and a real uvicorn server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import uvicorn

from covserve.service import Settings, create_app
from covserve.training.export import ModelCard, export_model
from covserve.training.networks import Standardisation
from tests.random_models import random_model

STARTUP_TIMEOUT_SECONDS = 60.0


def export_tiny_model(repository: Path, name: str, in_dim: int, out_dim: int, kind: str, seed: int) -> Path:
    """Train-free export of a small random model (BatchNorm statistics warmed on random rows)."""
    generator = np.random.default_rng(seed)
    inputs = generator.normal(size=(200, in_dim)) * 3.0 + 1.0
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
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
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

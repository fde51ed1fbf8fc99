"""Fixtures for the whole suite, made once per session: exported model repositories and running servers.

``served_repository``
    alpha (3 → 2, Cholesky), beta versions 1 and 2 (2 → 3, sqrt): read-only, shared by every service test
    that only reads it.
``serve``
    ``serve(**settings)`` → the base URL of a real uvicorn server on 127.0.0.1 over ``served_repository``;
    one server per distinct configuration, started on first use and shared by every test asking for it.
``alpha_repository``
    a fresh, writable repository holding one model (alpha, as above), copied from a session template: for
    tests that reload, unload, corrupt or add versions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from covserve.service import Settings
from tests.service_fixtures import export_tiny_model, running_server

__all__: list[str] = []

SERVED_MODELS = (
    ("alpha", 3, 2, "cholesky", 0),
    ("beta", 2, 3, "sqrt", 1),
    ("beta", 2, 3, "sqrt", 2),
)
"""``(name, in_dim, out_dim, parameterisation, seed)`` in export order (beta twice: versions 1 and 2)."""


@pytest.fixture(scope="session")
def served_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served-models")
    for name, in_dim, out_dim, kind, seed in SERVED_MODELS:
        export_tiny_model(root, name, in_dim=in_dim, out_dim=out_dim, kind=kind, seed=seed)
    return root


@pytest.fixture(scope="session")
def serve(served_repository: Path) -> Iterator[Callable[..., str]]:
    urls: dict[tuple[tuple[str, object], ...], str] = {}
    with ExitStack() as servers:

        def start(**settings: object) -> str:
            key = tuple(sorted(settings.items()))
            if key not in urls:
                configured = Settings(repository=served_repository, threads=1, **settings)  # type: ignore[arg-type]
                urls[key] = servers.enter_context(running_server(configured))
            return urls[key]

        yield start


@pytest.fixture(scope="session")
def alpha_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("alpha-template")
    name, in_dim, out_dim, kind, seed = SERVED_MODELS[0]
    export_tiny_model(root, name, in_dim=in_dim, out_dim=out_dim, kind=kind, seed=seed)
    return root


@pytest.fixture
def alpha_repository(alpha_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(alpha_template, root)
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every ``slow`` mark says why the test needs its size: ``@pytest.mark.slow(reason="...")``."""
    unexplained = [
        item.nodeid
        for item in items
        for mark in item.iter_markers("slow")
        if not isinstance(mark.kwargs.get("reason"), str) or not mark.kwargs["reason"]
    ]
    if unexplained:
        raise pytest.UsageError(f"slow marks without a reason: {unexplained}")

"""Operations: repository API, hot reload under load, invalid versions, polling, SIGTERM drain."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from covserve.service import Settings
from tests.service_fixtures import export_tiny_model, running_server

ROW = {"inputs": [[0.1, 0.2, 0.3]]}
WAIT_SECONDS = 60.0


def test_repository_index_load_and_unload(alpha_repository: Path) -> None:
    repository = alpha_repository
    with running_server(Settings(repository=repository, threads=1)) as url:
        index = httpx.post(f"{url}/v2/repository/index").json()
        assert index == [{"name": "alpha", "version": "1", "state": "READY", "reason": ""}]
        export_tiny_model(repository, "alpha", in_dim=3, out_dim=2, kind="sqrt", seed=1)
        assert httpx.post(f"{url}/v1/models/alpha/predict", json=ROW).json()["version"] == 1
        assert httpx.post(f"{url}/v2/repository/models/alpha/load").status_code == 200
        assert httpx.post(f"{url}/v1/models/alpha/predict", json=ROW).json()["version"] == 2
        assert httpx.post(f"{url}/v2/repository/models/alpha/unload").status_code == 200
        gone = httpx.post(f"{url}/v1/models/alpha/predict", json=ROW)
        assert gone.status_code == 404
        assert "alpha" in gone.json()["error"]
        assert httpx.post(f"{url}/v2/repository/models/alpha/unload").status_code == 404
        assert httpx.post(f"{url}/v2/repository/models/alpha/load").status_code == 200
        assert httpx.post(f"{url}/v1/models/alpha/predict", json=ROW).status_code == 200
        missing = httpx.post(f"{url}/v2/repository/models/nothing/load")
        assert missing.status_code == 404  # no such model folder (400: folders, none valid)
        assert "nothing" in missing.json()["error"]


def test_an_invalid_version_is_reported_and_skipped(alpha_repository: Path) -> None:
    repository = alpha_repository
    broken = repository / "alpha" / "2"
    shutil.copytree(repository / "alpha" / "1", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    with running_server(Settings(repository=repository, threads=1)) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        listing = httpx.get(f"{url}/v1/models").json()
        assert [(m["name"], m["version"]) for m in listing["models"]] == [("alpha", 1)]
        assert "sha256" in listing["skipped"][0]["reason"]
        index = httpx.post(f"{url}/v2/repository/index").json()
        assert {"name": "alpha", "version": "2", "state": "UNAVAILABLE"}.items() <= index[-1].items()


@pytest.mark.slow(reason="exports new versions while clients keep the server busy")
def test_hot_reload_under_concurrent_requests_loses_no_request(alpha_repository: Path) -> None:
    repository = alpha_repository
    statuses: list[int] = []
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                statuses.append(client.post(f"{url}/v1/models/alpha/predict", json=ROW).status_code)

    with running_server(Settings(repository=repository, threads=1)) as url, ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(hammer, url) for _ in range(4)]
        for seed in (1, 2):
            export_tiny_model(repository, "alpha", in_dim=3, out_dim=2, kind="sqrt", seed=seed)
            assert (
                httpx.post(f"{url}/v2/repository/models/alpha/load", timeout=WAIT_SECONDS).status_code == 200
            )
        stop.set()
        for worker in workers:
            worker.result()
        assert httpx.post(f"{url}/v1/models/alpha/predict", json=ROW).json()["version"] == 3
    assert len(statuses) > 20
    assert set(statuses) == {200}


def test_polling_picks_up_a_new_version(alpha_repository: Path) -> None:
    repository = alpha_repository
    with running_server(Settings(repository=repository, threads=1, poll_seconds=0.2)) as url:
        export_tiny_model(repository, "alpha", in_dim=3, out_dim=2, kind="sqrt", seed=4)
        deadline = time.monotonic() + WAIT_SECONDS
        while httpx.post(f"{url}/v1/models/alpha/predict", json=ROW).json()["version"] != 2:
            assert time.monotonic() < deadline, "the new version was not picked up"
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _inflight(url: str) -> float:
    """``covserve_inflight_requests`` (this scrape included)."""
    for line in httpx.get(f"{url}/metrics", timeout=WAIT_SECONDS).text.splitlines():
        if line.startswith("covserve_inflight_requests "):
            return float(line.split()[1])
    raise AssertionError("covserve_inflight_requests is missing from /metrics")


@pytest.mark.slow(reason="a real server process held busy by a 4 s batching delay while SIGTERM arrives")
def test_sigterm_drains_in_flight_requests_then_exits(alpha_repository: Path) -> None:
    repository = alpha_repository
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "covserve.service", "--repository", str(repository), "--port", str(port)]
    # a 4 s batching delay holds every request in flight until the signal has certainly arrived (it is sent
    # as soon as the server counts every request in flight)
    batching = ["--max-queue-delay-ms", "4000", "--max-batch-size", "1000"]
    process = subprocess.Popen([*command, "--threads", "1", *batching], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            assert process.poll() is None, "server exited during startup"
            time.sleep(0.1)
        rows = {"inputs": [[0.1, 0.2, 0.3]] * 4}
        outcomes: list[int] = []

        def post() -> None:
            response = httpx.post(f"{url}/v1/models/alpha/predict", json=rows, timeout=WAIT_SECONDS)
            outcomes.append(response.status_code)

        senders = [threading.Thread(target=post) for _ in range(8)]
        for sender in senders:
            sender.start()
        # every sender accepted and waiting for its batch (the scrape counts itself): none is in the backlog
        while _inflight(url) < len(senders) + 1:
            assert time.monotonic() < deadline + WAIT_SECONDS, "the requests did not all reach the server"
        process.send_signal(signal.SIGTERM)
        for sender in senders:
            sender.join()
        assert outcomes == [200] * len(senders)
        # uvicorn re-raises the signal after the graceful shutdown, so the status reports SIGTERM
        assert process.wait(timeout=WAIT_SECONDS) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v2/health/live", timeout=2)

"""Fault suite: what an attacker, an operator and a crash do to covserve, this checkout against a baseline.

    git worktree add /tmp/covserve-baseline <revision>
    python benchmarks/reliability.py --baseline /tmp/covserve-baseline [--quick] [--soak-seconds 600]
        [--output benchmarks/results/reliability.md]

Every probe runs against a server (``python -m covserve.service``) or a training run
(``covserve.training.cli``) started in each checkout in turn, the baseline first, over the same exported
demo-shaped model (4 inputs, 4 targets) and the same virtual environment:

* a 16 MB body, while a prober asks ``/v2/health/live`` every 10 ms: the answer, its time, the prober's
  worst wait;
* 128 concurrent 15 MB bodies, and 128 valid bodies of the row limit to a server admitting 8 beyond its
  worker: the statuses, the refusals' p99, the server's CPU time and peak RSS (the load generator on a CPU
  of its own, the servers on the other, its garbage collector frozen: see :func:`_flood`);
* 1 100 silent connections to a server whose open-file limit is 1 024: how long until a new client is
  served; a client that declares 100 bytes and sends 10: how long until the server answers; headers that
  never complete (a header line every 100 ms); a refused upload that keeps trickling in; bytes that are
  not HTTP;
* schemathesis ``--checks all`` against ``/openapi.json`` (``tests/test_service_schema.py``'s settings);
* unanswerable and hostile inputs: an OIP shape of 16 384³ elements, inputs near float32's maximum, a
  client that leaves mid-body, numbers as strings and booleans, version ``01``, two Authorization headers,
  an inference key unloading a model;
* 1 000 load calls on a broken version (the ``skipped`` list), hot reload and on-disk corruption under
  8-client load, SIGTERM with 24 requests in flight, a soak (``--soak-seconds``, RSS growth);
* ``kill -9`` during training and export (never a partial version), ``--resume`` of a finished run, and
  CSVs with values float32 cannot carry.

``--quick`` shrinks every probe to seconds (the test suite runs it). Figures are wall-clock on a shared
machine: the report states the load average beside them; compare the two columns, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import orjson
from _arguments import positive_int
from _machine import describe_machine, load_generator_pinned
from _report import write_report
from serving import HOST, IN_DIM, MODEL_NAME, ROOT, Server, _covserve_arguments, _export, _server

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "reliability.md"
NARROW_MODEL = "narrow"
"""A model trained on inputs of spread 1e-3: float32-range inputs standardise to infinity there."""
NARROW_INPUT_SCALE = 1e-3
FLOAT32_MAX = float(np.finfo(np.float32).max)
OPEN_FILES = 1024
PROBE_INTERVAL_SECONDS = 0.01
CLIENT_TIMEOUT_SECONDS = 60.0
LOAD_CLIENTS = 8
CHUNK_BYTES = 64 * 1024
"""Bytes a client sends between two looks at its socket for an answer."""
KEY = "inference-key"
MAX_ROWS = 4096
"""The servers' default row limit."""
ADMITTED_QUEUE = 8
Answer = tuple[int | None, float]
"""A status (``None``: no answer) and its seconds."""
FLOOD_SETTLE_SECONDS = 0.2
"""Wait after a flood's last answer before reading the server's CPU time (closes still in progress)."""


TRICKLE_INTERVAL_SECONDS = 0.1
QUICK_HEADER_TIMEOUT_SECONDS = 2
"""``--quick`` servers' header timeout (through the environment, which a baseline without it ignores)."""


@dataclass(frozen=True)
class Sizes:
    """Every probe's size: the issue's figures, or seconds-long ones with ``--quick``."""

    large_body_bytes: int
    overload_bodies: int
    overload_body_bytes: int
    idle_connections: int
    wait_seconds: float
    schemathesis_examples: int
    load_calls: int
    load_seconds: float
    in_flight: int
    soak_seconds: float
    kills: int


FULL = Sizes(16_000_000, 128, 15_000_000, 1100, 30.0, 100, 1000, 10.0, 24, 600.0, 6)
QUICK = Sizes(2_000_000, 8, 2_000_000, 40, 12.0, 5, 20, 1.0, 8, 2.0, 1)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout to compare against")
    parser.add_argument("--quick", action="store_true", help="seconds-long probes (the test suite's)")
    parser.add_argument(
        "--soak-seconds", type=positive_int, default=None, help="soak length (default 600, quick 2)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown report")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ raw HTTP


async def _exchange(
    port: int,
    head: bytes,
    body: bytes = b"",
    *,
    chunk: int = CHUNK_BYTES,
    timeout: float = CLIENT_TIMEOUT_SECONDS,
) -> Answer:
    """Send ``head`` then ``body`` in chunks while reading the answer; ``(status or None, seconds)``, timed
    from the first byte sent to the status line (connection set-up is not timed, as wrk and perf_analyzer
    time requests on open connections).

    Sending stops as soon as an answer arrives (a server that refuses early is not made to read), and the
    sender yields to the event loop after every chunk, so that the answer is read when it arrives, as a
    client polling its socket would: a sender that writes while the kernel takes the bytes would otherwise
    push megabytes per connection through the loopback before it looks."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, TimeoutError):
        return None, time.perf_counter() - started
    answer = asyncio.ensure_future(reader.readline())

    async def send() -> None:
        writer.write(head)
        for offset in range(0, len(body), chunk):
            if answer.done():
                return
            writer.write(body[offset : offset + chunk])
            await writer.drain()
            await asyncio.sleep(0)

    started = time.perf_counter()
    sender = asyncio.ensure_future(send())
    try:
        line = await asyncio.wait_for(answer, timeout)
        status = int(line.split()[1]) if line.startswith(b"HTTP/") else None
    except (OSError, TimeoutError, ValueError, IndexError):
        status = None
    elapsed = time.perf_counter() - started
    sender.cancel()
    writer.transport.abort()  # an upload abandoned: what the kernel still holds to send is dropped
    return status, elapsed


async def _exchanges(port: int, head: bytes, body: bytes, count: int) -> list[Answer]:
    """``count`` concurrent :func:`_exchange` calls."""
    return list(await asyncio.gather(*(_exchange(port, head, body) for _ in range(count))))


def _flood(server: Server, head: bytes, body: bytes, count: int) -> tuple[list[Answer], float]:
    """``count`` concurrent exchanges of ``head`` and ``body`` (:func:`_exchange`); their answers and the
    server's CPU seconds meanwhile.

    This process's garbage collector is frozen for the flood: a full collection over the objects of the
    libraries loaded here (torch among them) pauses the client for hundreds of milliseconds, which would be
    timed as the server's."""

    gc.collect()
    gc.freeze()
    cpu = _cpu_seconds(server.pid)
    try:
        answers = asyncio.run(_exchanges(server.port, head, body, count))
    finally:
        gc.unfreeze()
    time.sleep(FLOOD_SETTLE_SECONDS)
    return answers, _cpu_seconds(server.pid) - cpu


def _p99(seconds: list[float]) -> float | None:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None


def _statuses(answers: list[Answer]) -> str:
    counts = Counter("none" if status is None else str(status) for status, _ in answers)
    return ", ".join(f"{count} × {status}" for status, count in sorted(counts.items()))


@dataclass(frozen=True)
class Trickled:
    """What the server did to a connection that kept sending: its status (``None``: no answer), and the
    seconds until it ended its side (end of stream) and until it refused more bytes (``None``: not within
    the probe's limit)."""

    status: int | None
    ended: float | None
    gone: float | None

    def describe(self, limit: float) -> str:
        def at(seconds: float | None) -> str:
            return f"after {seconds:.1f} s" if seconds is not None else f"not within {limit:g} s"

        answer = "no answer" if self.status is None else str(self.status)
        return f"{answer}; end of stream {at(self.ended)}; connection gone {at(self.gone)}"


async def _trickle(port: int, head: bytes, piece: bytes, limit: float) -> Trickled:
    """Send ``head``, then ``piece`` every :data:`TRICKLE_INTERVAL_SECONDS` until the server refuses more
    or ``limit`` seconds pass."""
    reader, writer = await asyncio.open_connection(HOST, port)
    started = time.perf_counter()
    status: int | None = None

    async def listen() -> float:
        nonlocal status
        line = await reader.readline()
        if line.startswith(b"HTTP/"):
            status = int(line.split()[1])
        await reader.read()  # the rest, until the server's end of stream
        return time.perf_counter() - started

    listening = asyncio.ensure_future(listen())
    gone = None
    writer.write(head)
    try:
        while time.perf_counter() - started < limit:
            await asyncio.sleep(TRICKLE_INTERVAL_SECONDS)
            writer.write(piece)
            await writer.drain()
    except OSError:
        gone = time.perf_counter() - started
    writer.transport.abort()
    ended = listening.result() if listening.done() and listening.exception() is None else None
    listening.cancel()
    return Trickled(status, ended, gone)


def _post_head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n{extra}\r\n"
    ).encode()


def _rows_body(size: int) -> bytes:
    """A ``{"inputs": [[...]]}`` body of about ``size`` bytes of demo-shaped rows."""
    row = b"[1.2345678, -2.3456789, 3.4567891, 0.5678912],"
    count = max(1, size // len(row))
    return b'{"inputs": [' + row * (count - 1) + row[:-1] + b"]}"


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


# ------------------------------------------------------------------------------------------ probes


LARGE_BODIES_AT_ONCE = 4


def _large_body(server: Server, sizes: Sizes) -> dict[str, str]:
    """One large body, then :data:`LARGE_BODIES_AT_ONCE` at once, while a prober asks for liveness."""
    body = _rows_body(sizes.large_body_bytes)
    head = _post_head(f"/v1/models/{MODEL_NAME}/predict", len(body))
    stop = threading.Event()
    waits: list[float] = []

    def probe() -> None:
        with httpx.Client(base_url=f"http://{HOST}:{server.port}", trust_env=False) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get("/v2/health/live")
                waits.append(time.perf_counter() - started)
                time.sleep(PROBE_INTERVAL_SECONDS)

    figures = {}
    for count in (1, LARGE_BODIES_AT_ONCE):
        label = f"{count} × {len(body) / 1e6:.0f} MB " + ("bodies at once" if count > 1 else "body")
        waits.clear()
        stop.clear()
        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(0.2)
        answers = asyncio.run(_exchanges(server.port, head, body, count))
        time.sleep(0.2)
        stop.set()
        prober.join()
        slowest = max(seconds for _, seconds in answers)
        figures[f"{label}: answers"] = f"{_statuses(answers)}, the last in {_ms(slowest)}"
        figures[f"health check worst wait meanwhile ({label})"] = _ms(max(waits))
    return figures


def _overload(server: Server, sizes: Sizes) -> dict[str, str]:
    body = _rows_body(sizes.overload_body_bytes)
    head = _post_head(f"/v1/models/{MODEL_NAME}/predict", len(body))
    before = _rss_mib(server.pid)
    answers, cpu = _flood(server, head, body, sizes.overload_bodies)
    p99 = _p99([seconds for status, seconds in answers if status in (413, 503)])
    quiet = _under_load(server.port, sizes.load_seconds, lambda: None)

    def floods() -> None:
        deadline = time.perf_counter() + sizes.load_seconds
        while time.perf_counter() < deadline:
            asyncio.run(_exchanges(server.port, head, body, sizes.overload_bodies))

    flooded = _under_load(server.port, sizes.load_seconds, floods)
    return {
        f"{sizes.overload_bodies} × {len(body) / 1e6:.0f} MB: statuses": _statuses(answers),
        "refusals (413, 503): p99 from the first byte sent": _ms(p99),
        "server CPU time for the flood": _ms(cpu),
        "server RSS before → peak": f"{before:.0f} → {_peak_rss_mib(server.pid):.0f} MiB",
        f"valid requests of {LOAD_CLIENTS} clients answered while floods follow one another, of those "
        "answered without": f"{flooded['200'] / max(1, quiet['200']):.0%} "
        f"({flooded['200']} of {quiet['200']})",
    }


def _admission(server: Server, sizes: Sizes) -> dict[str, str]:
    """Valid bodies of ``MAX_ROWS`` rows, ``overload_bodies`` at once, to a server admitting
    ``ADMITTED_QUEUE`` beyond its workers."""
    row = b"[1.2345678, -2.3456789, 3.4567891, 0.5678912]"
    body = b'{"inputs": [' + b",".join([row] * MAX_ROWS) + b"]}"
    head = _post_head(f"/v1/models/{MODEL_NAME}/predict", len(body))
    answers, cpu = _flood(server, head, body, sizes.overload_bodies)
    p99 = _p99([seconds for status, seconds in answers if status == 503])
    return {
        f"{sizes.overload_bodies} valid {MAX_ROWS}-row bodies at once, --max-queue {ADMITTED_QUEUE}: "
        "statuses": _statuses(answers),
        "503 p99 from the first byte sent": _ms(p99),
        "server CPU time (admission flood)": _ms(cpu),
        "server peak RSS (admission)": f"{_peak_rss_mib(server.pid):.0f} MiB",
    }


def _first_served_after(port: int, deadline_seconds: float) -> float | None:
    """Seconds until a fresh client gets a 200 from ``/v2/health/live`` (``None``: not by the deadline)."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_seconds:
        try:
            if (
                httpx.get(f"http://{HOST}:{port}/v2/health/live", timeout=1.0, trust_env=False).status_code
                == 200
            ):
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return None


def _idle_connections(server: Server, sizes: Sizes) -> dict[str, str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * sizes.idle_connections)), hard))
    held = []
    for _ in range(sizes.idle_connections):
        try:
            held.append(socket.create_connection((HOST, server.port), timeout=5))
        except OSError:
            break
    served = _first_served_after(server.port, sizes.wait_seconds)
    for connection in held:
        connection.close()
    return {
        f"{sizes.idle_connections} silent connections (open-file limit {OPEN_FILES}): a new client "
        "served after": _ms(served) if served is not None else f"not within {sizes.wait_seconds:g} s"
    }


def _slow_body(server: Server, sizes: Sizes) -> dict[str, str]:
    head = _post_head(f"/v1/models/{MODEL_NAME}/predict", 100)
    status, seconds = asyncio.run(_exchange(server.port, head + b'{"inputs":', timeout=sizes.wait_seconds))
    answer = (
        f"{status} after {seconds:.1f} s"
        if status is not None
        else f"no answer within {sizes.wait_seconds:g} s"
    )
    return {"Content-Length 100, 10 bytes sent: the server": answer}


def _trickles(server: Server, sizes: Sizes) -> dict[str, str]:
    headers = asyncio.run(
        _trickle(server.port, b"GET /v2/health/live HTTP/1.1\r\n", b"x-slow: 1\r\n", sizes.wait_seconds)
    )
    upload = asyncio.run(
        _trickle(
            server.port,
            _post_head(f"/v1/models/{MODEL_NAME}/predict", sizes.overload_body_bytes),
            b"[1.0, 2.0, 3.0, 4.0]," * 50,
            sizes.wait_seconds,
        )
    )
    with socket.create_connection((HOST, server.port), timeout=CLIENT_TIMEOUT_SECONDS) as connection:
        connection.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "none"
    kind = re.search(rb"content-type: ([\w/]+)", answer, re.IGNORECASE)
    return {
        "headers never complete (a header line every 100 ms): the server": headers.describe(
            sizes.wait_seconds
        ),
        f"a refused {sizes.overload_body_bytes / 1e6:.0f} MB upload still trickling in (1 KB every 100 ms): "
        "the server": upload.describe(sizes.wait_seconds),
        "bytes that are not HTTP: the answer": f"{status} {kind.group(1).decode() if kind else ''}".strip(),
    }


SCHEMATHESIS_CONFIG = """[parameters]
name = "{model}"

[checks.positive_data_acceptance]
expected-statuses = ["2xx", 400, 401, 403, 404, 409, 413, 422, 429]
"""


def _schemathesis(server: Server, sizes: Sizes, scratch: Path) -> dict[str, str]:
    config = scratch / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.format(model=MODEL_NAME), encoding="utf-8")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            f"http://{HOST}:{server.port}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(sizes.schemathesis_examples),
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        cwd=scratch,
        check=False,
    )
    summary = next(
        (line.strip() for line in result.stdout.splitlines() if " generated, " in line), "no summary"
    )
    server_errors = len(re.findall(r"\[5\d\d\]", result.stdout))
    return {"schemathesis --checks all": summary, "5xx answers seen by schemathesis": str(server_errors)}


def _hostile_inputs(server: Server, log: Path) -> dict[str, str]:
    base = f"http://{HOST}:{server.port}"
    huge = {"inputs": [{"name": "x", "shape": [0, 16384, 16384, 16384], "datatype": "FP32", "data": []}]}
    with httpx.Client(base_url=base, trust_env=False, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        shape = client.post(f"/v2/models/{MODEL_NAME}/infer", content=orjson.dumps(huge)).status_code
        extreme = client.post(
            f"/v1/models/{NARROW_MODEL}/predict", json={"inputs": [[FLOAT32_MAX, 1.0, 1.0, 1.0]]}
        ).status_code
        typed = client.post(
            f"/v1/models/{MODEL_NAME}/predict", json={"inputs": [[True, False, "1", 2]]}
        ).status_code
        padded = client.post(
            f"/v1/models/{MODEL_NAME}/versions/01/predict", json={"inputs": [[1, 2, 3, 4]]}
        ).status_code
        not_allowed = client.get(f"/v1/models/{MODEL_NAME}/predict")
        queried = client.get(f"/v2/models/{MODEL_NAME}?version=7").status_code
        infer = {"inputs": [{"name": "x", "shape": [1, IN_DIM], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        queried_infer = client.post(f"/v2/models/{MODEL_NAME}/infer?version=7", json=infer).status_code
    asyncio.run(
        _exchange(server.port, _post_head(f"/v1/models/{MODEL_NAME}/predict", 1000), b"{", timeout=0.5)
    )
    time.sleep(0.5)
    metrics = httpx.get(f"{base}/metrics", trust_env=False).text
    gone = re.findall(
        r'covserve_requests_total\{code="(\d+)",model="'
        + MODEL_NAME
        + r'",route="/v1/models/\{name\}/predict"',
        metrics,
    )
    tracebacks = log.read_text(errors="replace").count("Traceback")
    return {
        "OIP shape [0, 16384, 16384, 16384]": str(shape),
        "inputs at float32's maximum (a model trained on spread 1e-3)": str(extreme),
        "client gone mid-body: counted as": ", ".join(sorted(set(gone))) or "—",
        "tracebacks in the server log": str(tracebacks),
        '[[true, false, "1", 2]] as inputs': str(typed),
        "version 01": str(padded),
        "GET on a POST route: status, Allow": f"{not_allowed.status_code}, "
        + not_allowed.headers.get("allow", "none"),
        "?version=7 (not a version) on metadata, on infer": f"{queried}, {queried_infer}",
    }


def _roles(server: Server) -> dict[str, str]:
    base = f"http://{HOST}:{server.port}"
    wrong_last = [("authorization", f"Bearer {KEY}"), ("authorization", "Bearer wrong")]
    with httpx.Client(base_url=base, trust_env=False) as client:
        doubled = client.get("/v1/models", headers=wrong_last).status_code
        unload = client.post(
            f"/v2/repository/models/{MODEL_NAME}/unload", headers={"Authorization": f"Bearer {KEY}"}
        ).status_code
    return {
        "two Authorization headers (right, then wrong)": str(doubled),
        "an inference key unloads a model": str(unload),
    }


def _skipped_growth(server: Server, repository: Path, sizes: Sizes) -> dict[str, str]:
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{", encoding="utf-8")
    with httpx.Client(base_url=f"http://{HOST}:{server.port}", trust_env=False) as client:
        for _ in range(sizes.load_calls):
            client.post("/v2/repository/models/broken/load")
        grown = len(client.get("/v1/models").json()["skipped"])
        shutil.rmtree(broken.parent)
        client.post("/v2/repository/models/broken/load")
        fixed = len(client.get("/v1/models").json()["skipped"])
    return {
        f"`skipped` after {sizes.load_calls} loads of a broken version → after its removal": (
            f"{grown} → {fixed}"
        )
    }


def _under_load(port: int, seconds: float, during: Callable[[], None]) -> Counter[str]:
    """``LOAD_CLIENTS`` closed-loop predict clients for ``seconds`` while ``during`` runs; their statuses
    (a failure's status with the first answer's text)."""
    statuses: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(
            base_url=f"http://{HOST}:{port}", trust_env=False, timeout=CLIENT_TIMEOUT_SECONDS
        ) as session:
            while not stop.is_set():
                try:
                    answered = session.post(
                        f"/v1/models/{MODEL_NAME}/predict", json={"inputs": [[1, 2, 3, 4]]}
                    )
                    status = str(answered.status_code)
                    if status != "200" and not any(key.startswith(status) for key in statuses):
                        status = f"{status} {answered.text[:120]}"
                    elif status != "200":
                        status = next(key for key in statuses if key.startswith(status))
                    statuses[status] += 1
                except httpx.HTTPError as error:
                    statuses[type(error).__name__] += 1

    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    during()
    time.sleep(max(0.0, seconds - (time.perf_counter() - started)))
    stop.set()
    for thread in threads:
        thread.join()
    return statuses


def _failures(statuses: Counter[str]) -> str:
    failed = sum(count for status, count in statuses.items() if status != "200")
    return f"{failed} of {sum(statuses.values())} failed" + (f" ({dict(statuses)})" if failed else "")


def _reload_and_corruption(server: Server, repository: Path, sizes: Sizes) -> dict[str, str]:
    base = f"http://{HOST}:{server.port}"

    def reload() -> None:
        deadline = time.perf_counter() + sizes.load_seconds
        while time.perf_counter() < deadline:
            httpx.post(
                f"{base}/v2/repository/models/{MODEL_NAME}/load",
                trust_env=False,
                timeout=CLIENT_TIMEOUT_SECONDS,
            )

    onnx = repository / MODEL_NAME / "1" / "model.onnx"
    intact = onnx.read_bytes()

    def corrupt() -> None:
        onnx.write_bytes(intact[: len(intact) // 2])
        reload()

    reloaded = _under_load(server.port, sizes.load_seconds, reload)
    corrupted = _under_load(server.port, sizes.load_seconds, corrupt)
    onnx.write_bytes(intact)
    httpx.post(
        f"{base}/v2/repository/models/{MODEL_NAME}/load", trust_env=False, timeout=CLIENT_TIMEOUT_SECONDS
    )
    return {
        f"hot reload under {LOAD_CLIENTS}-client load": _failures(reloaded),
        "served model.onnx truncated under load": _failures(corrupted),
    }


def _soak(server: Server, sizes: Sizes) -> dict[str, str]:
    before = _rss_mib(server.pid)
    statuses = _under_load(server.port, sizes.soak_seconds, lambda: None)
    after = _rss_mib(server.pid)
    return {
        f"{sizes.soak_seconds:g} s soak, {LOAD_CLIENTS} clients": _failures(statuses),
        "soak RSS growth": f"{before:.0f} → {after:.0f} MiB ({(after / before - 1) * 100:+.1f} %)",
    }


def _sigterm(source: Path, repository: Path, scratch: Path, sizes: Sizes) -> dict[str, str]:
    arguments = [
        *_covserve_arguments(repository, "cpu"),
        "--max-queue-delay-ms",
        "300",
        "--max-batch-size",
        "1000",
    ]
    with _server(arguments, scratch / f"sigterm-{source.name}.log", source) as server:

        async def in_flight() -> list[int | None]:
            body = orjson.dumps({"inputs": [[1, 2, 3, 4]]})
            head = _post_head(f"/v1/models/{MODEL_NAME}/predict", len(body))
            tasks = [
                asyncio.ensure_future(_exchange(server.port, head, body)) for _ in range(sizes.in_flight)
            ]
            await asyncio.sleep(0.1)
            os.kill(server.pid, signal.SIGTERM)
            return [status for status, _ in await asyncio.gather(*tasks)]

        started = time.perf_counter()
        statuses = asyncio.run(in_flight())
        while Path(f"/proc/{server.pid}").exists() and time.perf_counter() - started < 30:
            if Path(f"/proc/{server.pid}/status").read_text().find("State:\tZ") >= 0:
                break
            time.sleep(0.01)
        exited = time.perf_counter() - started
    failed = sum(1 for status in statuses if status != 200)
    return {
        f"SIGTERM with {sizes.in_flight} requests in flight": f"{failed} failed, exit after {exited:.2f} s"
    }


# ------------------------------------------------------------------------------------------ training


def _train(source: Path, arguments: list[str], scratch: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys\nfrom covserve.training.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *arguments],
        capture_output=True,
        text=True,
        cwd=source,
        check=False,
        timeout=600,
    )


TINY = ["--width", "8", "--depth", "1", "--device", "cpu", "--no-progress"]


def _bad_csvs(source: Path, scratch: Path) -> dict[str, str]:
    rows = 60
    cases: dict[str, Callable[[int], tuple[float, float, float]]] = {
        "targets up to 1e30": lambda i: (float(i), float(i % 7), 1e30 * (i % 3)),
        "targets up to 1e300": lambda i: (float(i), float(i % 7), 1e300 * (i % 3)),
        "inputs up to 1e300": lambda i: (1e300 * (i % 3), float(i % 7), float(i % 5)),
        "an input of standard deviation 4e-14": lambda i: (1e-13 * (i % 3), float(i % 7), float(i % 5)),
    }
    figures = {}
    for label, row in cases.items():
        stem = re.sub(r"\W+", "-", label)
        path = scratch / f"{source.name}-{stem}.csv"
        path.write_text("a,b,y\n" + "".join(",".join(repr(v) for v in row(i)) + "\n" for i in range(rows)))
        flags = ["fit", "--data", str(path), "--targets", "y", "--epochs", "1", *TINY]
        flags += ["--repository", str(scratch / "bad-models"), "--run-dir", str(scratch / "bad-runs")]
        result = _train(source, flags, scratch)
        traceback = " with a traceback" if "Traceback" in result.stderr else ""
        figures[f"CSV with {label}: exit code"] = f"{result.returncode}{traceback}"
    return figures


def _kills_and_resume(source: Path, scratch: Path, sizes: Sizes) -> dict[str, str]:
    repository, runs = scratch / f"kill-models-{source.name}", scratch / f"kill-runs-{source.name}"
    flags = [
        "fit",
        "--samples",
        "600",
        "--epochs",
        "3",
        *TINY,
        "--repository",
        str(repository),
        "--run-dir",
        str(runs),
    ]
    code = "import sys\nfrom covserve.training.cli import main\nsys.exit(main(sys.argv[1:]))"
    generator = np.random.default_rng(0)
    for _ in range(sizes.kills):
        process = subprocess.Popen(
            [sys.executable, "-c", code, *flags],
            cwd=source,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(float(generator.uniform(3.0, 9.0)))
        process.kill()
        process.wait()
    versions = sorted((repository / "synthetic").glob("*")) if (repository / "synthetic").exists() else []
    partial = [
        path.name
        for path in versions
        if not ((path / "model.onnx").is_file() and (path / "model.json").is_file())
    ]
    finished = _train(source, flags, scratch)
    run = max(runs.iterdir(), key=lambda path: path.stat().st_mtime)
    count = len(list((repository / "synthetic").iterdir()))
    _train(source, ["fit", "--resume", str(run), "--no-progress"], scratch)
    after = len(list((repository / "synthetic").iterdir()))
    return {
        f"kill -9 at random times, {sizes.kills} ×: partial versions": str(len(partial)),
        "--resume of a finished run: versions before → after": f"{count} → {after}"
        + ("" if finished.returncode == 0 else " (fit failed)"),
    }


# ------------------------------------------------------------------------------------------ driver


@contextmanager
def _served(
    source: Path,
    repository: Path,
    log: Path,
    *extra: str,
    open_files: int | None = None,
    cpus: set[int] | None = None,
) -> Iterator[Server]:
    with _server(
        [*_covserve_arguments(repository, "cpu"), *extra], log, source, cpus=cpus, open_files=open_files
    ) as server:
        yield server


def _probe(source: Path, template: Path, scratch: Path, sizes: Sizes) -> dict[str, str]:
    """Every probe against ``source``'s server and training CLI, on a fresh copy of ``template``."""
    repository = scratch / f"models-{source.name}"
    shutil.copytree(template, repository)
    log = scratch / f"server-{source.name}.log"
    figures: dict[str, str] = {}
    with _served(source, repository, log) as server:
        figures |= _large_body(server, sizes)
        figures |= _slow_body(server, sizes)
        figures |= _trickles(server, sizes)
        figures |= _hostile_inputs(server, log)
        figures |= _skipped_growth(server, repository, sizes)
        figures |= _reload_and_corruption(server, repository, sizes)
        figures |= _soak(server, sizes)
        figures |= _schemathesis(server, sizes, scratch)  # last: its stateful phase unloads models
    queue = ("--max-queue", str(ADMITTED_QUEUE), "--workers", "1")
    with load_generator_pinned() as cpus:
        with _served(source, repository, scratch / f"overload-{source.name}.log", cpus=cpus) as server:
            figures |= _overload(server, sizes)
        with _served(
            source, repository, scratch / f"admission-{source.name}.log", *queue, cpus=cpus
        ) as server:
            figures |= _admission(server, sizes)
    with _served(source, repository, scratch / f"idle-{source.name}.log", open_files=OPEN_FILES) as server:
        figures |= _idle_connections(server, sizes)
    os.environ["COVSERVE_API_KEYS"] = KEY
    try:
        with _served(source, repository, scratch / f"keys-{source.name}.log") as server:
            figures |= _roles(server)
    finally:
        del os.environ["COVSERVE_API_KEYS"]
    figures |= _sigterm(source, repository, scratch, sizes)
    figures |= _bad_csvs(source, scratch)
    figures |= _kills_and_resume(source, scratch, sizes)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    sizes = QUICK if args.quick else FULL
    if args.soak_seconds is not None:
        sizes = Sizes(**{**sizes.__dict__, "soak_seconds": float(args.soak_seconds)})
    if args.quick:
        os.environ["COVSERVE_HEADER_TIMEOUT_SECONDS"] = str(QUICK_HEADER_TIMEOUT_SECONDS)
    load = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covserve-reliability-") as directory:
        scratch = Path(directory)
        template = scratch / "template"
        _export(template)
        _export(template, NARROW_MODEL, NARROW_INPUT_SCALE)
        results = {}
        for label, source in (("before", args.baseline.resolve()), ("after", ROOT)):
            (scratch / label).mkdir()
            results[label] = _probe(source, template, scratch / label, sizes)
            print(f"{label}: {json.dumps(results[label], indent=1)}", flush=True)
    revision = subprocess.run(
        ["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    lines = [
        "# Reliability and security: the fault suite, before and after",
        "",
        f"Command: `python benchmarks/reliability.py --baseline <worktree of {revision or 'the baseline'}>"
        f"{' --quick' if args.quick else ''} --soak-seconds {sizes.soak_seconds:g}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; load average {load[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - started:.0f} s in all  ",
        "Machine: " + describe_machine(("httpx", httpx.__version__)),
        "",
        f"Model: the serving benchmark's demo shape ({IN_DIM} inputs, 4 targets), default server settings on "
        f'{HOST}, one process per probe group. "before" is the baseline checkout, "after" this one.',
        "",
        "| probe | before | after |",
        "|---|---|---|",
    ]
    for key in results["after"]:
        lines.append(f"| {key} | {results['before'].get(key, '—')} | {results['after'][key]} |")
    write_report(args.output, "\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

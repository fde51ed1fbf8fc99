"""Serving throughput and latency of covserve, next to two ceilings measured in the same run.

    python benchmarks/serving.py                 # concurrency 1, 16, 64; 5 s per cell (about 5 minutes)
    python benchmarks/serving.py --quick         # concurrency 1, 16; 0.2 s per cell, a smoke test (< 30 s)
    python benchmarks/serving.py --output benchmarks/results/serving.md [--seconds S]

A demo-shaped model (4 inputs → 4 targets, sqrt parameterisation, width 32, depth 5; random weights, the
cost of a forward pass does not depend on training) is exported into a temporary repository and served on
127.0.0.1 by ``python -m covserve.service --threads 1 --workers 2 --device cpu`` in its own process, so
the load generator and the server do not share a GIL. The load generator is asyncio streams sending
pre-encoded HTTP/1.1 requests (see :class:`Connection`), one keep-alive connection per concurrent caller; each
caller sends its next request as soon as the last one is answered. A cell warms up for a fifth of its
duration, then runs for ``--seconds``; responses are read in full and their status checked, and one
response per cell is decoded and its shapes checked.

Cells: single-row and 256-row requests, as native JSON (``POST /v1/models/{m}/predict``, default outputs
mean and covariance) and as OIP binary (``POST /v2/models/{m}/infer``, a binary FP32 input and binary
``mean`` and ``covariance`` outputs, built with ``tritonclient.http``), each against a server with dynamic
each against a server with dynamic batching off (``--no-batching``), with the default batching (a request runs
at once when a worker is free; those arriving while both are busy share the next run) and with a 2 ms
delay for fuller batches (``--max-queue-delay-ms 2 --max-batch-size 1024``). ``benchmarks/batching.py``
compares these modes with the ones before the default batching, side by side.

Ceilings: (1) ``onnxruntime.InferenceSession.run`` on 256-row batches in this process with one intra-op
thread; (2) a bare FastAPI route echoing the single-row JSON body, served by uvicorn in its own process, at
the highest concurrency. Server and client CPU are reported in cores (process CPU seconds per wall second;
the server's from ``/proc``, Linux only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch
import tritonclient.http as httpclient
import uvicorn
from _arguments import positive_float
from _machine import describe_machine
from _report import write_report
from numpy.typing import NDArray

from covserve.repository import INPUT_NAME, MODEL_FILE
from covserve.service._oip import BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER, JSON_CONTENT_TYPE
from covserve.training.export import ModelCard, export_model
from covserve.training.networks import CovarianceModel, Standardisation

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODEL_NAME = "bench"
IN_DIM = 4
OUT_DIM = 4
KIND = "sqrt"
WIDTH = 32
DEPTH = 5
TRAINING_ROWS = 1000
VERIFICATION_ROWS = 16
INPUT_SCALE = 3.0
INPUT_SHIFT = 1.0
SEED = 0

BATCH_ROWS = 256
ROW_COUNTS = (1, BATCH_ROWS)
FULL_CONCURRENCY = (1, 16, 64)
QUICK_CONCURRENCY = (1, 16)
FULL_SECONDS = 5.0
QUICK_SECONDS = 0.2
WARM_UP_FRACTION = 0.2
RAW_WARM_UP_RUNS = 20
SERVER_THREADS = 1
SERVER_WORKERS = 2
CPU = "cpu"
CUDA = "cuda"
BATCHING = {
    "off": ["--no-batching"],
    "on (default)": [],
    "on, 2 ms delay": ["--max-queue-delay-ms", "2", "--max-batch-size", "1024"],
}

ECHO_TARGET = 0.7
RAW_TARGET = 0.5
PERCENTILES = (50.0, 95.0, 99.0)
MILLISECONDS = 1000.0
STARTUP_TIMEOUT_SECONDS = 120.0
SHUTDOWN_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 60.0
READY_POLL_SECONDS = 0.1
READY_REQUEST_TIMEOUT_SECONDS = 1.0
LOG_TAIL_CHARACTERS = 3000

NATIVE = "native JSON"
OIP = "OIP binary"
OIP_OUTPUTS = ("mean", "covariance")
READY_PATH = "/v2/health/ready"
ECHO_PATH = "/echo"
ECHO_MODULE = "echo_app"
ECHO_APP = f'''"""A bare FastAPI app: the HTTP ceiling of the covserve routes."""

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.get("{READY_PATH}")
async def ready() -> Response:
    return Response(status_code=200)


@app.post("{ECHO_PATH}")
async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="{JSON_CONTENT_TYPE}")
'''


@dataclass(frozen=True)
class Reply:
    """One HTTP response as the load generator reads it."""

    status: int
    headers: dict[str, str]
    body: bytes


Check = Callable[[Reply], None]


class Connection:
    """A minimal keep-alive HTTP/1.1 client connection: one pre-encoded request at a time.

    A load generator must cost far less than the server it measures, and on a 2-core machine an httpx
    request costs more CPU than the covserve request it times. Here a request is one ``write`` of bytes
    built once per cell, and a response is its head plus ``Content-Length`` bytes (the only framing the
    measured servers use; anything else is an error).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> Reply:
        self._writer.write(request)
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, value in (line.split(":", 1) for line in head[1:] if line)
        }
        if "content-length" not in headers:
            raise RuntimeError(f"response without Content-Length (status {status}): not supported here")
        return Reply(status, headers, await self._reader.readexactly(int(headers["content-length"])))

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


@dataclass(frozen=True)
class Load:
    """One kind of request: where it goes, its body and headers, and how to check one response."""

    protocol: str
    rows: int
    path: str
    body: bytes
    headers: dict[str, str]
    check: Check

    def request(self, host: str, port: int) -> bytes:
        """The whole HTTP/1.1 request, encoded once per cell."""
        headers = {"Host": f"{host}:{port}", **self.headers, "Content-Length": str(len(self.body))}
        head = f"POST {self.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (head + "\r\n").encode("latin-1") + self.body


@dataclass(frozen=True)
class Cell:
    """One measured cell: successful requests, failures, wall seconds, latencies and CPU cores used."""

    protocol: str
    rows: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]
    server_cores: float
    client_cores: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.requests_per_second * self.rows

    @property
    def server_ms_per_request(self) -> float:
        """Server CPU per request: less sensitive than throughput to what else the machine runs."""
        return self.server_cores / self.requests_per_second * MILLISECONDS


@dataclass(frozen=True)
class RawCeiling:
    """``InferenceSession.run`` in-process: calls, wall seconds and the median call in milliseconds."""

    calls: int
    seconds: float
    median_ms: float

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.calls_per_second * BATCH_ROWS


# ------------------------------------------------------------------------------------------------ the model


def _export(repository: Path, name: str = MODEL_NAME, input_scale: float = INPUT_SCALE) -> Path:
    """Export the demo-shaped model, trained on inputs of spread ``input_scale``, into ``repository`` as
    ``name``; returns its ``model.onnx``."""
    generator = np.random.default_rng(SEED)
    inputs = generator.normal(size=(TRAINING_ROWS, IN_DIM)) * input_scale + INPUT_SHIFT
    targets = inputs @ generator.normal(size=(IN_DIM, OUT_DIM)) + generator.normal(
        size=(TRAINING_ROWS, OUT_DIM)
    )
    torch.manual_seed(SEED)
    model = CovarianceModel(
        IN_DIM, OUT_DIM, KIND, Standardisation.fit(inputs, targets), width=WIDTH, depth=DEPTH
    )
    model.train()
    with torch.no_grad():  # BatchNorm running statistics from the training rows, as after training
        model.predict(model.standardise_inputs(torch.as_tensor(inputs, dtype=torch.float32)))
    model.eval()
    card = ModelCard(
        name=name,
        method="w2-bound",
        input_names=tuple(f"x{i}" for i in range(IN_DIM)),
        target_names=tuple(f"y{i}" for i in range(OUT_DIM)),
        data_description="random benchmark data",
        split_sizes={"train": TRAINING_ROWS, "validation": 0, "test": 0},
        test_metrics={},
        training_input_mean=inputs.mean(axis=0),
        training_input_covariance=np.cov(inputs, rowvar=False),
    )
    return export_model(model, card, repository, inputs[:VERIFICATION_ROWS]) / MODEL_FILE


def _rows(count: int) -> NDArray[np.float32]:
    generator = np.random.default_rng(SEED + count)
    rows = generator.normal(size=(count, IN_DIM)) * INPUT_SCALE + INPUT_SHIFT
    return rows.astype(np.float32)


def _raw_ceiling(model_path: Path, seconds: float, device: str) -> RawCeiling:
    """``session.run`` on one 256-row batch, repeated for ``seconds``, with the service's session options
    (on ``device``: ``cuda`` runs the graph with the CUDA execution provider)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = SERVER_THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device == CUDA:
        ort.preload_dlls()  # the CUDA and cuDNN wheels' libraries, as the service does
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(model_path), options, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise RuntimeError(f"{providers[0]} did not attach: {session.get_providers()}")
    feed = {INPUT_NAME: _rows(BATCH_ROWS)}
    for _ in range(RAW_WARM_UP_RUNS):
        session.run(None, feed)
    durations: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        call = time.perf_counter()
        session.run(None, feed)
        durations.append(time.perf_counter() - call)
    elapsed = time.perf_counter() - started
    return RawCeiling(len(durations), elapsed, float(np.median(durations)) * MILLISECONDS)


# ------------------------------------------------------------------------------------------------ requests


def _ok(reply: Reply) -> None:
    if reply.status != HTTPStatus.OK:
        raise RuntimeError(f"expected status 200, got {reply.status}: {reply.body[:LOG_TAIL_CHARACTERS]!r}")


def _covariance_check(rows: int, covariance: Callable[[Reply], NDArray[np.float64]]) -> Check:
    def check(reply: Reply) -> None:
        _ok(reply)
        shape = covariance(reply).shape
        if shape != (rows, OUT_DIM, OUT_DIM):
            raise RuntimeError(f"covariance: expected shape {(rows, OUT_DIM, OUT_DIM)}, got {shape}")

    return check


def _native_covariance(reply: Reply) -> NDArray[np.float64]:
    return np.asarray(json.loads(reply.body)["outputs"]["covariance"], dtype=np.float64)


def _oip_covariance(reply: Reply) -> NDArray[np.float64]:
    length = reply.headers.get(HEADER_LENGTH_HEADER.lower())
    result = httpclient.InferenceServerClient.parse_response_body(
        reply.body, header_length=None if length is None else int(length)
    )
    return np.asarray(result.as_numpy("covariance"), dtype=np.float64)


def _native_load(rows: int) -> Load:
    body = json.dumps({"inputs": _rows(rows).tolist()}).encode()
    return Load(
        NATIVE,
        rows,
        f"/v1/models/{MODEL_NAME}/predict",
        body,
        {"Content-Type": JSON_CONTENT_TYPE},
        _covariance_check(rows, _native_covariance),
    )


def _oip_load(rows: int) -> Load:
    tensor = httpclient.InferInput(INPUT_NAME, [rows, IN_DIM], "FP32")
    tensor.set_data_from_numpy(_rows(rows), binary_data=True)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OIP_OUTPUTS]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(json_size)}
    return Load(
        OIP,
        rows,
        f"/v2/models/{MODEL_NAME}/infer",
        bytes(body),
        headers,
        _covariance_check(rows, _oip_covariance),
    )


def _echo_load() -> Load:
    native = _native_load(1)

    def check(reply: Reply) -> None:
        _ok(reply)
        if reply.body != native.body:
            raise RuntimeError("echo: the response body differs from the request body")

    return Load("bare FastAPI echo", 1, ECHO_PATH, native.body, native.headers, check)


# ------------------------------------------------------------------------------------------------ servers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), NaN where ``/proc`` is missing."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return math.nan
    fields = stat.read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), after "pid (comm)"
    return (user + system) / os.sysconf("SC_CLK_TCK")


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-LOG_TAIL_CHARACTERS:]
            raise RuntimeError(f"the server exited with {process.returncode}:\n{tail}")
        try:
            if (
                httpx.get(
                    base_url + READY_PATH, timeout=READY_REQUEST_TIMEOUT_SECONDS, trust_env=False
                ).status_code
                == HTTPStatus.OK
            ):
                return
        except httpx.TransportError:
            pass
        time.sleep(READY_POLL_SECONDS)
    raise RuntimeError(f"the server was not ready within {STARTUP_TIMEOUT_SECONDS:.0f} s")


@dataclass(frozen=True)
class Server:
    """A server process under test: its port and pid."""

    port: int
    pid: int


@contextmanager
def _server(
    arguments: list[str],
    log: Path,
    source: Path = ROOT,
    cpus: set[int] | None = None,
    open_files: int | None = None,
) -> Iterator[Server]:
    """Run ``python <arguments> --port P`` on a free port until ready, in ``source`` (``python -m``
    imports that checkout's ``covserve`` first), on ``cpus`` only when given (Linux), with its soft and
    hard open-file limits set to ``open_files`` when given."""
    port = _free_port()

    def limits() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, *arguments, "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=source,
            preexec_fn=None if cpus is None and open_files is None else limits,
        )
        try:
            base_url = f"http://{HOST}:{port}"
            _wait_ready(base_url, process, log)
            yield Server(port, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _covserve_arguments(repository: Path, device: str) -> list[str]:
    return [
        "-m",
        "covserve.service",
        "--repository",
        str(repository),
        "--host",
        HOST,
        "--threads",
        str(SERVER_THREADS),
        "--workers",
        str(SERVER_WORKERS),
        "--device",
        device,
        "--no-access-log",
    ]


def _echo_arguments(app_dir: Path) -> list[str]:
    (app_dir / f"{ECHO_MODULE}.py").write_text(ECHO_APP)
    return [
        "-m",
        "uvicorn",
        f"{ECHO_MODULE}:app",
        "--app-dir",
        str(app_dir),
        "--host",
        HOST,
        "--log-level",
        "warning",
        "--no-access-log",
    ]


# ------------------------------------------------------------------------------------------------ load


async def _phase(connections: list[Connection], request: bytes, seconds: float) -> tuple[list[float], int]:
    """One closed-loop caller per connection for ``seconds``: successful latencies (s) and failure count."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    failures: list[int] = []

    async def caller(connection: Connection) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            reply = await connection.send(request)
            if reply.status == HTTPStatus.OK:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(reply.status)

    await asyncio.gather(*(caller(connection) for connection in connections))
    return latencies, len(failures)


async def _drive(server: Server, load: Load, concurrency: int, seconds: float) -> Cell:
    """``concurrency`` callers, each with its own keep-alive connection."""
    connections = [await Connection.open(HOST, server.port) for _ in range(concurrency)]
    try:
        request = load.request(HOST, server.port)
        load.check(await connections[0].send(request))
        await _phase(connections, request, seconds * WARM_UP_FRACTION)
        server_cpu, client_cpu = _cpu_seconds(server.pid), time.process_time()
        started = time.perf_counter()
        latencies, errors = await asyncio.wait_for(
            _phase(connections, request, seconds), seconds + REQUEST_TIMEOUT_SECONDS
        )
        elapsed = time.perf_counter() - started
        server_cores = (_cpu_seconds(server.pid) - server_cpu) / elapsed
        client_cores = (time.process_time() - client_cpu) / elapsed
    finally:
        for connection in connections:
            await connection.close()
    percentiles = np.percentile(latencies, PERCENTILES) * MILLISECONDS
    return Cell(
        load.protocol,
        load.rows,
        concurrency,
        len(latencies),
        errors,
        elapsed,
        tuple(float(value) for value in percentiles),
        server_cores,
        client_cores,
    )


def _measure(server: Server, load: Load, concurrency: int, seconds: float) -> Cell:
    return asyncio.run(_drive(server, load, concurrency, seconds))


# ------------------------------------------------------------------------------------------------ report


def _cell_line(cell: Cell) -> str:
    latencies = " | ".join(f"{value:.2f}" for value in cell.latencies_ms)
    return (
        f"| {cell.protocol} | {cell.rows} | {cell.concurrency} | {cell.requests} | {cell.errors} | "
        f"{cell.requests_per_second:,.0f} | {cell.rows_per_second:,.0f} | {latencies} | "
        f"{cell.server_cores:.2f} | {cell.server_ms_per_request:.2f} | {cell.client_cores:.2f} |"
    )


def _verdict(ratio: float, target: float) -> str:
    return "**met**" if ratio >= target else "**not met**"


def _targets(cells: list[Cell], echo: Cell, raw: RawCeiling) -> list[str]:
    top = max(cell.concurrency for cell in cells)
    single = next(c for c in cells if (c.protocol, c.rows, c.concurrency) == (NATIVE, 1, top))
    best = max(
        (c for c in cells if (c.protocol, c.rows) == (OIP, BATCH_ROWS)), key=lambda c: c.rows_per_second
    )
    echo_ratio = single.requests_per_second / echo.requests_per_second
    raw_ratio = best.rows_per_second / raw.rows_per_second
    return [
        "| ratio | value | target | verdict |",
        "|---|---:|---:|---|",
        f"| single-row native predict requests/s at concurrency {top} ÷ echo requests/s at concurrency "
        f"{echo.concurrency} | {echo_ratio:.2f} | ≥ {ECHO_TARGET} | {_verdict(echo_ratio, ECHO_TARGET)} |",
        f"| best {BATCH_ROWS}-row OIP-binary rows/s (concurrency {best.concurrency}) ÷ raw session.run "
        f"rows/s | {raw_ratio:.2f} | ≥ {RAW_TARGET} | {_verdict(raw_ratio, RAW_TARGET)} |",
        "",
        f"Target 1 (predict ≥ {ECHO_TARGET} × echo) is {_verdict(echo_ratio, ECHO_TARGET)}: "
        f"{single.requests_per_second:,.0f} against {echo.requests_per_second:,.0f} requests/s.  ",
        f"Target 2 (OIP binary ≥ {RAW_TARGET} × session.run) is {_verdict(raw_ratio, RAW_TARGET)}: "
        f"{best.rows_per_second:,.0f} against {raw.rows_per_second:,.0f} rows/s.",
    ]


def _command(quick: bool, seconds: float | None, device: str) -> str:
    flags = (" --quick" if quick else "") + (f" --seconds {seconds:g}" if seconds is not None else "")
    flags += f" --device {device}" if device != CPU else ""
    return f"python benchmarks/serving.py{flags}"


def _section(mode: str, cells: list[Cell], header: str, rule: str) -> list[str]:
    return [
        f"## covserve, batching {mode}",
        "",
        f"Server flags: `{' '.join(BATCHING[mode]) or '(defaults: --batching --max-queue-delay-ms 0)'}`.",
        "",
        header,
        rule,
        *(_cell_line(cell) for cell in cells),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables and write them to ``--output``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="concurrency 1 and 16, 0.2 s cells: a smoke test"
    )
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    parser.add_argument("--seconds", type=positive_float, default=None, help="measured seconds per cell")
    parser.add_argument(
        "--device",
        choices=(CPU, CUDA),
        default=CPU,
        help="server --device and raw ceiling provider",
    )
    args = parser.parse_args(argv)
    seconds: float = args.seconds or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    concurrencies = QUICK_CONCURRENCY if args.quick else FULL_CONCURRENCY
    top = max(concurrencies)

    load_at_start = os.getloadavg()[0]
    lines = [
        "# Serving throughput and latency",
        "",
        f"Command: `{_command(args.quick, args.seconds, args.device)}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        "Machine: "
        + describe_machine(("ONNX Runtime", ort.__version__), ("uvicorn", uvicorn.__version__))
        + (f"; GPU: {torch.cuda.get_device_name(0)}" if args.device == CUDA else ""),
        "",
        f"Model: {IN_DIM} inputs → {OUT_DIM} targets, {KIND} parameterisation, width {WIDTH}, depth {DEPTH}. "
        f"Server: `python -m covserve.service --threads {SERVER_THREADS} --workers {SERVER_WORKERS} "
        f"--device {args.device} "
        f"--no-access-log` in its own process on {HOST} (the echo runs with uvicorn's `--no-access-log`; "
        "the last section measures the access log's cost). Load: asyncio streams with pre-encoded HTTP/1.1 "
        "requests, closed loop, "
        f"one keep-alive connection per caller, {seconds:g} s per cell after a "
        f"{seconds * WARM_UP_FRACTION:g} s warm-up. The load generator and the servers share the machine's "
        "CPUs; server and client CPU are in cores (CPU seconds per wall second).",
        "",
    ]
    results: dict[str, list[Cell]] = {}
    with tempfile.TemporaryDirectory(prefix="covserve-serving-") as scratch:
        directory = Path(scratch)
        model_path = _export(directory / "models")
        raw = _raw_ceiling(model_path, seconds, args.device)
        print(f"raw session.run: {raw.rows_per_second:,.0f} rows/s", flush=True)
        with _server(_echo_arguments(directory), directory / "echo.log") as echo_server:
            echo = _measure(echo_server, _echo_load(), top, seconds)
        print(_cell_line(echo), flush=True)
        loads = [make(rows) for make in (_native_load, _oip_load) for rows in ROW_COUNTS]
        for mode, flags in BATCHING.items():
            arguments = [*_covserve_arguments(directory / "models", args.device), *flags]
            with _server(arguments, directory / f"covserve-{mode}.log") as server:
                cells = results.setdefault(mode, [])
                for load in loads:
                    for concurrency in concurrencies:
                        cells.append(_measure(server, load, concurrency, seconds))
                        print(f"batching {mode}: " + _cell_line(cells[-1]), flush=True)
        arguments = [
            *_covserve_arguments(directory / "models", args.device),
            "--access-log",
        ]
        with _server(arguments, directory / "covserve-access-log.log") as server:
            logged = _measure(server, loads[0], top, seconds)
            print("access log on: " + _cell_line(logged), flush=True)

    header = (
        "| protocol | rows/request | concurrency | requests | errors | requests/s | rows/s | p50 ms | "
        "p95 ms | p99 ms | server CPU | server CPU ms/request | client CPU |"
    )
    rule = "|---|" + "---:|" * 12
    lines += [
        "## Ceilings",
        "",
        "| ceiling | calls/s | rows/s | p50 ms |",
        "|---|---:|---:|---:|",
        f"| `InferenceSession.run`, {BATCH_ROWS} rows, 1 intra-op thread, in-process | "
        f"{raw.calls_per_second:,.0f} | {raw.rows_per_second:,.0f} | {raw.median_ms:.2f} |",
        f"| bare FastAPI echo of the single-row JSON body, uvicorn, concurrency {top} | "
        f"{echo.requests_per_second:,.0f} | {echo.rows_per_second:,.0f} | {echo.latencies_ms[0]:.2f} |",
        "",
        header,
        rule,
        _cell_line(echo),
        "",
    ]
    for mode, cells in results.items():
        lines += _section(mode, cells, header, rule)
    unlogged = next(
        cell
        for cell in results["on (default)"]
        if (cell.protocol, cell.rows, cell.concurrency) == (NATIVE, 1, top)
    )
    lines += [
        "## Cost of the access log",
        "",
        "Default batching, with `--access-log` (one JSON line per request, written to a file): "
        f"{logged.requests_per_second / unlogged.requests_per_second:.2f} × the requests/s of the same cell "
        f"without it, {logged.server_ms_per_request - unlogged.server_ms_per_request:+.2f} ms of server CPU "
        "per request.",
        "",
        header,
        rule,
        _cell_line(logged),
        "",
    ]
    lines += ["## Targets", ""]
    for mode, cells in results.items():
        lines += [f"Batching {mode}:", "", *_targets(cells, echo, raw), ""]
    if args.quick:
        lines += ["Quick mode: short cells and no concurrency 64; a smoke test, not a measurement.", ""]
    lines += [
        f"One-minute load average at the start and end of the run: {load_at_start:.2f} and "
        f"{os.getloadavg()[0]:.2f} (other processes on the machine compete for its CPUs).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        write_report(args.output, text)


if __name__ == "__main__":
    main()

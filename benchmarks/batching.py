"""Batching without a latency price: the default batching against the two modes before it, side by side.

    git worktree add /tmp/covserve-before <revision before the change>
    python benchmarks/batching.py --baseline /tmp/covserve-before \\
        [--perf-analyzer /tmp/pa/bin/perf_analyzer] [--seconds 2] [--rounds 3] [--output FILE]
    python benchmarks/batching.py --quick      # a smoke test (this checkout only, no perf_analyzer)

Four servers run at once over the demo-shaped model of ``benchmarks/serving.py`` (same flags: one intra-op
thread, two workers, no access log):

* ``before, off`` and ``before, 2 ms``: the ``--baseline`` checkout with its default (batching off) and with
  ``--max-queue-delay-ms 2 --max-batch-size 1024`` (without ``--baseline``, this checkout's
  ``--no-batching`` and the same delay flags stand in for them);
* ``default``: this checkout's defaults (a request runs at once when a worker is free; requests that arrive
  while both are busy are merged into the next run, up to 1024 rows);
* ``2 ms``: this checkout with the delay flags, the knob for fuller batches.

Every cell is measured ``--rounds`` times on every server, the servers' order rotating from round to round,
by two load generators: ``benchmarks/serving.py``'s (closed loop, pre-encoded HTTP/1.1, native JSON and OIP
binary) and, with ``--perf-analyzer``, Triton's ``perf_analyzer`` (OIP binary over HTTP, ``-b`` rows per
request, a 1 s measurement window until three windows agree). Where the machine has two CPUs, the servers
share CPU 0 and the load generators run on CPU 1.

``perf_analyzer`` is optional (it is not a covserve dependency): the binary ships inside the
``tritonclient`` 2.50.0 wheel (newer wheels need a newer glibc than Debian 12's) and needs the Debian package
``libb64-0d`` and NVIDIA's CUDA runtime wheel even over HTTP on a CPU::

    python3 -m venv /tmp/pa && /tmp/pa/bin/pip install 'tritonclient[all]==2.50.0' nvidia-cuda-runtime-cu12
    sudo apt-get install libb64-0d

This script finds ``libcudart.so.12`` in the binary's virtual environment and sets ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime as ort
import uvicorn
from _arguments import positive_float, positive_int
from _machine import describe_machine, load_generator_pinned
from _report import write_report
from serving import (
    BATCH_ROWS,
    CPU,
    HOST,
    LOG_TAIL_CHARACTERS,
    MODEL_NAME,
    NATIVE,
    OIP,
    ROOT,
    Server,
    _covserve_arguments,
    _export,
    _measure,
    _native_load,
    _oip_load,
    _server,
)
from serving_compare import _revision

SECONDS = 2.0
QUICK_SECONDS = 0.2
ROUNDS = 3
DELAY_FLAGS = ("--max-queue-delay-ms", "2", "--max-batch-size", "1024")
CELLS = ((1, 1), (1, 16), (1, 64), (BATCH_ROWS, 16))
"""(rows per request, concurrency) of every measured cell."""
QUICK_CELLS = ((1, 1), (1, 16))
PERF_ANALYZER_CELLS = ((1, 1), (1, 64), (BATCH_ROWS, 16))
PERF_ANALYZER = "perf_analyzer"
NATIVE_FLAG, OIP_FLAG, BOTH = "json", "binary", "both"
"""``--protocols`` of the ``serving.py`` cells: native JSON, OIP binary or both (``perf_analyzer``'s are
always OIP binary)."""
PERF_ANALYZER_WINDOW_MS = 1000
PERF_ANALYZER_TIMEOUT_SECONDS = 300
CUDA_RUNTIME = "libcudart.so.12"

LATENCY_TOLERANCE = 0.10
"""Target 1: the default's single-row median latency at concurrency 1 within 10 % of batching off's."""
WORSE_TOLERANCE = 0.05
"""Target 3 counts a 256-row throughput within 5 % of the best earlier mode as no worse (round-to-round
noise on this machine is of that order; the per-round spread is printed beside it)."""


@dataclass(frozen=True)
class Mode:
    """One server: its label, checkout and flags."""

    label: str
    source: Path
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Sample:
    """One measurement: requests/s, rows/s and the median and 99th-percentile latency in ms."""

    requests_per_second: float
    rows_per_second: float
    p50_ms: float
    p99_ms: float


@dataclass
class Series:
    """Every round's :class:`Sample` of one (generator, protocol, rows, concurrency, mode)."""

    samples: list[Sample]

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(sample, field) for sample in self.samples))


Key = tuple[str, str, int, int, str]
"""(generator, protocol, rows per request, concurrency, mode label)."""


def _modes(baseline: Path | None) -> list[Mode]:
    before_off: tuple[str, ...] = ("--no-batching",) if baseline is None else ()
    source = ROOT if baseline is None else baseline
    return [
        Mode("before, off", source, before_off),
        Mode("before, 2 ms", source, DELAY_FLAGS),
        Mode("default", ROOT, ()),
        Mode("2 ms", ROOT, DELAY_FLAGS),
    ]


def _cuda_runtime_directory(binary: Path) -> str | None:
    """The folder of ``libcudart.so.12`` in the virtual environment holding ``binary``, if any."""
    for library in sorted(
        binary.resolve().parent.parent.glob(f"lib/python*/site-packages/nvidia/*/lib/{CUDA_RUNTIME}")
    ):
        return str(library.parent)
    return None


def _perf_analyzer(binary: Path, server: Server, rows: int, concurrency: int) -> Sample:
    """One ``perf_analyzer`` measurement of OIP binary requests of ``rows`` rows at ``concurrency`` (on the
    load generator's CPU: a child inherits this process's CPU set)."""
    environment = dict(os.environ)
    libraries = _cuda_runtime_directory(binary)
    if libraries is not None:
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [libraries, environment.get("LD_LIBRARY_PATH")])
        )
    with tempfile.TemporaryDirectory(prefix="covserve-perf-analyzer-") as scratch:
        report = Path(scratch) / "report.csv"
        command = [
            str(binary),
            "-m",
            MODEL_NAME,
            "-u",
            f"{HOST}:{server.port}",
            "-i",
            "http",
            "-b",
            str(rows),
            "--concurrency-range",
            str(concurrency),
            "--measurement-interval",
            str(PERF_ANALYZER_WINDOW_MS),
            "-f",
            str(report),
        ]
        finished = subprocess.run(
            command,
            env=environment,
            capture_output=True,
            text=True,
            timeout=PERF_ANALYZER_TIMEOUT_SECONDS,
            check=False,
        )
        if finished.returncode != 0 or not report.exists():
            output = (finished.stdout + finished.stderr)[-LOG_TAIL_CHARACTERS:]
            raise RuntimeError(f"perf_analyzer failed with exit status {finished.returncode}:\n{output}")
        with report.open(newline="") as handle:
            (row,) = list(csv.DictReader(handle))
    inferences = float(row["Inferences/Second"])  # rows per second: perf_analyzer counts -b per request
    return Sample(
        inferences / rows, inferences, float(row["p50 latency"]) / 1000.0, float(row["p99 latency"]) / 1000.0
    )


def _ours(server: Server, protocol: str, rows: int, concurrency: int, seconds: float) -> Sample:
    load = (_native_load if protocol == NATIVE else _oip_load)(rows)
    cell = _measure(server, load, concurrency, seconds)
    if cell.errors:
        raise RuntimeError(
            f"{cell.errors} failed requests in {protocol}, {rows} rows, concurrency {concurrency}"
        )
    p50, _, p99 = cell.latencies_ms
    return Sample(cell.requests_per_second, cell.rows_per_second, p50, p99)


def _table(results: dict[Key, Series], modes: list[Mode], generator: str) -> list[str]:
    labels = [mode.label for mode in modes]
    lines = [
        "| protocol | rows/request | concurrency | "
        + " | ".join(f"{label}: requests/s, p50 ms, p99 ms" for label in labels)
        + " |",
        "|---|---:|---:|" + "---:|" * len(labels),
    ]
    cells = sorted({key[1:4] for key in results if key[0] == generator})
    for protocol, rows, concurrency in cells:
        values = []
        for label in labels:
            series = results[(generator, protocol, rows, concurrency, label)]
            values.append(
                f"{series.median('requests_per_second'):,.0f}, {series.median('p50_ms'):.2f}, "
                f"{series.median('p99_ms'):.2f}"
            )
        lines.append(f"| {protocol} | {rows} | {concurrency} | " + " | ".join(values) + " |")
    return lines


def _round_ratios(numerator: Series, denominator: Series, field: str) -> list[float]:
    return [
        getattr(top, field) / getattr(bottom, field)
        for top, bottom in zip(numerator.samples, denominator.samples, strict=True)
    ]


@dataclass(frozen=True)
class Target:
    """One target: the default's series against an earlier mode's, on ``field``; ``lower_is_better`` for
    latencies. Met when the median per-round ratio is within ``tolerance`` on the right side of 1."""

    text: str
    field: str
    lower_is_better: bool
    tolerance: float

    def line(self, generator: str, protocol: str, default: Series, before: Series) -> str:
        ratios = _round_ratios(default, before, self.field)
        ratio = statistics.median(ratios)
        met = ratio <= 1 + self.tolerance if self.lower_is_better else ratio >= 1 - self.tolerance
        return (
            f"| {generator} | {protocol} | {self.text} | {default.median(self.field):,.2f} | "
            f"{before.median(self.field):,.2f} | {ratio:.2f} | {', '.join(f'{r:.2f}' for r in ratios)} | "
            f"{'**met**' if met else '**not met**'} |"
        )


LATENCY = Target("1 row, concurrency 1: p50 ms ≤ 1.10 × before, off", "p50_ms", True, LATENCY_TOLERANCE)
THROUGHPUT = Target("1 row, concurrency 64: requests/s ≥ before, 2 ms", "requests_per_second", False, 0.0)
LARGE = Target(
    f"{BATCH_ROWS} rows, concurrency 16: requests/s no worse than the better mode before",
    "requests_per_second",
    False,
    WORSE_TOLERANCE,
)


def _targets(results: dict[Key, Series]) -> list[str]:
    lines = [
        "| generator | protocol | target | default | before | ratio (median of rounds) | per-round ratios "
        "| verdict |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for generator, protocol in sorted({(key[0], key[1]) for key in results}):
        cell = {key[2:]: series for key, series in results.items() if key[:2] == (generator, protocol)}
        if (1, 1, "default") in cell:
            lines.append(LATENCY.line(generator, protocol, cell[1, 1, "default"], cell[1, 1, "before, off"]))
        if (1, 64, "default") in cell:
            lines.append(
                THROUGHPUT.line(generator, protocol, cell[1, 64, "default"], cell[1, 64, "before, 2 ms"])
            )
        if (BATCH_ROWS, 16, "default") in cell:
            best = max(
                (cell[BATCH_ROWS, 16, mode] for mode in ("before, off", "before, 2 ms")),
                key=lambda series: series.median("requests_per_second"),
            )
            lines.append(LARGE.line(generator, protocol, cell[BATCH_ROWS, 16, "default"], best))
    return lines


def _cells(text: str) -> tuple[tuple[int, int], ...]:
    """``"256x16,1x64"`` → ``((256, 16), (1, 64))``; ``argparse.ArgumentTypeError`` otherwise."""
    cells = []
    for item in text.split(","):
        rows, _, concurrency = item.strip().partition("x")
        if not (rows.isdigit() and concurrency.isdigit() and int(rows) > 0 and int(concurrency) > 0):
            raise argparse.ArgumentTypeError(f"expected ROWSxCONCURRENCY cells such as 256x16, got {item!r}")
        cells.append((int(rows), int(concurrency)))
    return tuple(cells)


def _loads(averages: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.2f}" for value in averages)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the four servers, measure every cell on each in rotating rounds, print and write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="checkout of the revision before the change"
    )
    parser.add_argument("--perf-analyzer", type=Path, default=None, help="perf_analyzer binary (optional)")
    parser.add_argument("--seconds", type=positive_float, default=None, help="measured seconds per cell")
    parser.add_argument("--rounds", type=positive_int, default=None, help="measurements per cell and server")
    parser.add_argument(
        "--quick", action="store_true", help="one round of 0.2 s cells at concurrency 1 and 16"
    )
    parser.add_argument(
        "--cells",
        type=_cells,
        default=None,
        help="only these ROWSxCONCURRENCY cells, comma-separated (e.g. 256x16), with every load generator",
    )
    parser.add_argument("--protocols", choices=(NATIVE_FLAG, OIP_FLAG, BOTH), default=BOTH)
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    baseline: Path | None = None if args.baseline is None else args.baseline.resolve()
    if baseline is not None and not (baseline / "covserve" / "service" / "__init__.py").is_file():
        parser.error(f"--baseline: {baseline} is not a covserve checkout (no covserve/service/)")
    if args.perf_analyzer is not None and not os.access(args.perf_analyzer, os.X_OK):
        parser.error(f"--perf-analyzer: {args.perf_analyzer} is not an executable file")
    seconds: float = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    rounds: int = args.rounds or (1 if args.quick else ROUNDS)
    cells = args.cells or (QUICK_CELLS if args.quick else CELLS)
    protocols = {NATIVE_FLAG: (NATIVE,), OIP_FLAG: (OIP,), BOTH: (NATIVE, OIP)}[args.protocols]
    analyser_cells = PERF_ANALYZER_CELLS if args.cells is None else args.cells
    modes = _modes(baseline)
    revisions = {mode.label: _revision(mode.source) for mode in modes}

    load_at_start = os.getloadavg()
    results: dict[Key, Series] = {}
    with ExitStack() as stack:
        server_cpus = stack.enter_context(load_generator_pinned())
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covserve-batching-")))
        _export(directory / "models")
        servers = {
            mode.label: stack.enter_context(
                _server(
                    [*_covserve_arguments(directory / "models", CPU), *mode.flags],
                    directory / f"{mode.label.replace(' ', '_').replace(',', '')}.log",
                    mode.source,
                    server_cpus,
                )
            )
            for mode in modes
        }
        for round_index in range(rounds):
            order = modes[round_index % len(modes) :] + modes[: round_index % len(modes)]
            for mode in order:
                server = servers[mode.label]
                for protocol in protocols:
                    for rows, concurrency in cells:
                        sample = _ours(server, protocol, rows, concurrency, seconds)
                        key = ("serving.py", protocol, rows, concurrency, mode.label)
                        results.setdefault(key, Series([])).samples.append(sample)
                if args.perf_analyzer is not None:
                    for rows, concurrency in analyser_cells:
                        sample = _perf_analyzer(args.perf_analyzer, server, rows, concurrency)
                        key = (PERF_ANALYZER, OIP, rows, concurrency, mode.label)
                        results.setdefault(key, Series([])).samples.append(sample)
                print(f"round {round_index + 1} of {rounds}: {mode.label} measured", flush=True)

    command = "python benchmarks/batching.py" + (" --quick" if args.quick else "")
    command += "" if baseline is None else " --baseline <checkout>"
    command += "" if args.perf_analyzer is None else " --perf-analyzer <binary>"
    command += f" --seconds {seconds:g} --rounds {rounds}"
    if args.cells is not None:
        command += " --cells " + ",".join(f"{rows}x{concurrency}" for rows, concurrency in args.cells)
    command += "" if args.protocols == BOTH else f" --protocols {args.protocols}"
    modes_text = [
        f"* `{mode.label}`: {revisions[mode.label]}; flags `{' '.join(mode.flags) or '(defaults)'}`"
        for mode in modes
    ]
    lines = [
        "# Batching without a latency price",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        "Machine: " + describe_machine(("ONNX Runtime", ort.__version__), ("uvicorn", uvicorn.__version__)),
        f"Load average (1, 5, 15 min) at the start: {_loads(load_at_start)}; at the end: "
        f"{_loads(os.getloadavg())}.",
        "",
        "Servers (all four running at once, each `python -m covserve.service --threads 1 --workers 2 "
        "--device cpu --no-access-log` plus its flags"
        + (", pinned to one CPU with the load generators on the other" if server_cpus is not None else "")
        + "):",
        "",
        *modes_text,
        "",
        f"Each cell: {rounds} rounds on every server, the order rotating; medians over the rounds. "
        f"`serving.py` cells: {seconds:g} s after a {seconds / 5:g} s warm-up. `perf_analyzer` cells: OIP "
        f"binary, `-b ROWS --concurrency-range C --measurement-interval {PERF_ANALYZER_WINDOW_MS}`.",
        "",
        "## Targets",
        "",
        *_targets(results),
        "",
    ]
    for generator in ("serving.py", PERF_ANALYZER):
        if any(key[0] == generator for key in results):
            lines += [f"## {generator}", "", *_table(results, modes, generator), ""]
    text = "\n".join(lines)
    print(text)
    if args.output is not None:
        write_report(args.output, text)


if __name__ == "__main__":
    main()

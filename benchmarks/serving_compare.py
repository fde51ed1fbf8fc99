"""Serving throughput of this checkout against a baseline checkout, measured side by side in one run.

    git worktree add /tmp/covserve-baseline <revision>
    python benchmarks/serving_compare.py --baseline /tmp/covserve-baseline \\
        [--seconds 2] [--rounds 3] [--rows 1,256] [--output benchmarks/results/serving_compare.md]

Both servers run at once (``python -m covserve.service`` started in each checkout, so each imports its own
``covserve``; the same virtual environment), over the same exported model, with the flags of
``benchmarks/serving.py``. Every hot-path cell of ``serving.py`` (native JSON and OIP binary, 1 and 256
rows, concurrency 1, 16 and 64, its three batching modes; a baseline before ``--no-batching`` existed
cannot run them) is measured ``--rounds`` times on each server,
alternating which goes first (``--rows 1`` keeps the single-row cells only, for more rounds in the same
time). Where the machine has two or more CPUs (Linux), both servers are pinned to CPU 0 and the load
generator to CPU 1, so the two never compete for a core and a cell measures one core's worth of server.
The report gives each server's median requests/s and server CPU per request, and their ratio. Ratios
are what to read: the machine's load moves both servers alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from _arguments import positive_float, positive_int, positive_ints
from _machine import describe_machine, load_generator_pinned
from _report import write_report
from serving import (
    BATCHING,
    CPU,
    FULL_CONCURRENCY,
    ROOT,
    ROW_COUNTS,
    Cell,
    _covserve_arguments,
    _export,
    _measure,
    _native_load,
    _oip_load,
    _server,
)

SECONDS = 2.0
ROUNDS = 3
QUARTILES = (0.25, 0.75)
TOLERANCE = 0.10
"""A cell whose requests/s ratio (this checkout ÷ baseline) is below ``1 - TOLERANCE`` is flagged."""


@dataclass(frozen=True)
class Comparison:
    """One cell measured ``rounds`` times on both servers."""

    mode: str
    protocol: str
    rows: int
    concurrency: int
    baseline: tuple[Cell, ...]
    candidate: tuple[Cell, ...]

    @staticmethod
    def _rate(cells: tuple[Cell, ...]) -> float:
        return statistics.median(cell.requests_per_second for cell in cells)

    @staticmethod
    def _cpu(cells: tuple[Cell, ...]) -> float:
        return statistics.median(cell.server_ms_per_request for cell in cells)

    @property
    def round_ratios(self) -> list[float]:
        """Per round, this checkout's requests/s ÷ the baseline's (measured one after the other)."""
        return [
            candidate.requests_per_second / baseline.requests_per_second
            for baseline, candidate in zip(self.baseline, self.candidate, strict=True)
        ]

    @property
    def ratio(self) -> float:
        """The median of :attr:`round_ratios`."""
        return statistics.median(self.round_ratios)

    def line(self) -> str:
        verdict = "" if self.ratio >= 1.0 - TOLERANCE else " **below**"
        low, high = np.quantile(self.round_ratios, QUARTILES)
        return (
            f"| {self.mode} | {self.protocol} | {self.rows} | {self.concurrency} | "
            f"{self._rate(self.baseline):,.0f} | {self._rate(self.candidate):,.0f} | "
            f"{self.ratio:.2f}{verdict} | {low:.2f}–{high:.2f} | "
            f"{self._cpu(self.baseline):.3f} | {self._cpu(self.candidate):.3f} |"
        )


def _revision(source: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(source), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    )
    status = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, check=False
    )
    dirty = " (with uncommitted changes)" if status.stdout.strip() else ""
    return (result.stdout.strip() or "unknown revision") + dirty


def main(argv: Sequence[str] | None = None) -> None:
    """Run both servers, measure every cell on each, print and write the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the baseline revision")
    parser.add_argument("--seconds", type=positive_float, default=SECONDS, help="measured seconds per cell")
    parser.add_argument(
        "--rounds", type=positive_int, default=ROUNDS, help="measurements per cell and server"
    )
    parser.add_argument(
        "--rows", type=positive_ints, default=ROW_COUNTS, help=f"rows per request to measure, of {ROW_COUNTS}"
    )
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    baseline_source: Path = args.baseline.resolve()
    if not set(args.rows) <= set(ROW_COUNTS):
        parser.error(f"--rows: expected some of {ROW_COUNTS}, got {args.rows}")
    if not (baseline_source / "covserve" / "service" / "__init__.py").is_file():
        parser.error(f"--baseline: {baseline_source} is not a covserve checkout (no covserve/service/)")

    load_at_start = os.getloadavg()[0]
    comparisons: list[Comparison] = []
    with (
        load_generator_pinned() as server_cpus,
        tempfile.TemporaryDirectory(prefix="covserve-serving-compare-") as scratch,
    ):
        directory = Path(scratch)
        _export(directory / "models")
        loads = [make(rows) for make in (_native_load, _oip_load) for rows in args.rows]
        for mode, flags in BATCHING.items():
            arguments = [*_covserve_arguments(directory / "models", CPU), *flags]
            with (
                _server(
                    arguments, directory / f"baseline-{mode}.log", baseline_source, server_cpus
                ) as baseline,
                _server(arguments, directory / f"candidate-{mode}.log", ROOT, server_cpus) as candidate,
            ):
                for load in loads:
                    for concurrency in FULL_CONCURRENCY:
                        measured: dict[str, list[Cell]] = {"baseline": [], "candidate": []}
                        for round_index in range(args.rounds):
                            order = [("baseline", baseline), ("candidate", candidate)]
                            for name, server in order if round_index % 2 == 0 else order[::-1]:
                                measured[name].append(_measure(server, load, concurrency, args.seconds))
                        comparisons.append(
                            Comparison(
                                mode,
                                load.protocol,
                                load.rows,
                                concurrency,
                                tuple(measured["baseline"]),
                                tuple(measured["candidate"]),
                            )
                        )
                        print(comparisons[-1].line(), flush=True)

    flagged = [c for c in comparisons if c.ratio < 1.0 - TOLERANCE]
    lines = [
        "# Serving: this checkout against a baseline, side by side",
        "",
        f"Command: `python benchmarks/serving_compare.py --baseline <checkout> --seconds {args.seconds:g} "
        f"--rounds {args.rounds} --rows {','.join(str(rows) for rows in args.rows)}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        "Machine: " + describe_machine(("ONNX Runtime", ort.__version__), ("uvicorn", uvicorn.__version__)),
        "",
        f"Baseline: {_revision(baseline_source)}.  ",
        f"This checkout: {_revision(ROOT)}.",
        "",
        "Both servers run at once with the flags of `benchmarks/serving.py`"
        + (
            f", pinned to CPU {min(server_cpus)} with the load generator on another"
            if server_cpus is not None
            else ", unpinned"
        )
        + "; each cell is measured "
        f"{args.rounds} times on each, alternating which goes first, {args.seconds:g} s per measurement. "
        "Requests/s and server CPU ms per request are medians over the rounds; the ratio is the median "
        "over rounds of this checkout's requests/s ÷ the baseline's in the same round, with the "
        "interquartile range of those per-round ratios "
        f"(**below** marks a median under {1 - TOLERANCE:.2f}).",
        "",
        "| batching | protocol | rows/request | concurrency | baseline requests/s | requests/s | ratio | "
        "ratio IQR | baseline server CPU ms/request | server CPU ms/request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(comparison.line() for comparison in comparisons),
        "",
        f"Cells below {1 - TOLERANCE:.2f}: {len(flagged)} of {len(comparisons)}"
        + (
            ": " + ", ".join(f"{c.mode}/{c.protocol}/{c.rows}/{c.concurrency}" for c in flagged)
            if flagged
            else ""
        )
        + ".",
        "",
        f"One-minute load average at the start and end of the run: {load_at_start:.2f} and "
        f"{os.getloadavg()[0]:.2f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        write_report(args.output, text)


if __name__ == "__main__":
    main()

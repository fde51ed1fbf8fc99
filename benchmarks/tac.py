"""Benchmark: vectorised TAC (``training.metrics.tac``) against the naive per-sample, per-dimension loop.

Usage::

    python benchmarks/tac.py [--quick] [--repeats R] [--output benchmarks/results/tac.md]

Both implementations run side by side in the same process on the same random problems (means, SPD
covariances ``A A^T / D + 0.1 I`` and targets from a fixed seed). Each is timed ``R`` times and the
fastest run is reported; their TAC values must agree to a relative 1e-8 or the script fails. The
Markdown table is printed and written to ``--output`` under a header naming the command, the date,
the machine and the NumPy version.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from _arguments import positive_int
from _machine import describe_machine
from _report import write_report

from covserve.training.metrics import tac

FloatArray = npt.NDArray[np.float64]

FULL_SIZES: tuple[int, ...] = (1000, 5000)
FULL_DIMENSIONS: tuple[int, ...] = (4, 8, 16)
QUICK_SIZES: tuple[int, ...] = (50, 200)
QUICK_DIMENSIONS: tuple[int, ...] = (2, 4)
AGREEMENT_RTOL = 1e-8
JITTER = 0.1
SEED = 0
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "tac.md"


@dataclass(frozen=True)
class Timing:
    """One row of the table: problem size, best wall-clock seconds of each implementation and TAC."""

    num: int
    dim: int
    naive_seconds: float
    vectorised_seconds: float
    value: float

    @property
    def speed_up(self) -> float:
        return self.naive_seconds / self.vectorised_seconds


def naive_tac(mean: FloatArray, covariance: FloatArray, target: FloatArray) -> float:
    """TAC by explicit Gaussian conditioning, one sample and one dimension at a time.

    ``|y_i - (mu_i + S_{i,-i} S_{-i,-i}^-1 (y_-i - mu_-i))|`` averaged over samples and dimensions;
    each conditional mean solves the (D - 1) x (D - 1) system with ``numpy.linalg.solve``.
    """
    num, dim = mean.shape
    total: float = 0.0
    for n in range(num):
        residual = target[n] - mean[n]
        for i in range(dim):
            others = np.arange(dim) != i
            prediction = 0.0
            if dim > 1:
                weights = np.linalg.solve(covariance[n][np.ix_(others, others)], residual[others])
                prediction = float(covariance[n, i, others] @ weights)
            total += abs(residual[i] - prediction)
    return total / mean.size


def make_problem(num: int, dim: int, seed: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Random means (N, D), SPD covariances (N, D, D) and targets (N, D)."""
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((num, dim, dim))
    covariance = factor @ np.swapaxes(factor, -1, -2) / dim + JITTER * np.eye(dim)
    return rng.standard_normal((num, dim)), covariance, rng.standard_normal((num, dim))


def best_time(
    function: Callable[[FloatArray, FloatArray, FloatArray], float],
    problem: tuple[FloatArray, FloatArray, FloatArray],
    repeats: int,
) -> tuple[float, float]:
    """Fastest wall-clock time over ``repeats`` calls (seconds) and the value returned."""
    durations = []
    value = float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = function(*problem)
        durations.append(time.perf_counter() - start)
    return min(durations), value


def run(sizes: Sequence[int], dimensions: Sequence[int], repeats: int) -> list[Timing]:
    timings = []
    for num in sizes:
        for dim in dimensions:
            problem = make_problem(num, dim, SEED)
            naive_seconds, naive_value = best_time(naive_tac, problem, repeats)
            vectorised_seconds, value = best_time(tac, problem, repeats)
            if not np.isclose(value, naive_value, rtol=AGREEMENT_RTOL, atol=0.0):
                raise AssertionError(f"N={num}, D={dim}: vectorised TAC {value!r} != naive {naive_value!r}")
            timings.append(Timing(num, dim, naive_seconds, vectorised_seconds, value))
            print(f"N={num} D={dim}: naive {naive_seconds:.4f} s, vectorised {vectorised_seconds:.5f} s")
    return timings


def render(timings: Sequence[Timing], command: str, repeats: int) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# TAC: vectorised vs naive loop",
        "",
        f"- Command: `{command}`",
        f"- Date: {date}",
        f"- Machine: {describe_machine()}",
        f"- Seconds are the fastest of {repeats} runs; both implementations run side by side in this "
        f"process and agree to a relative {AGREEMENT_RTOL:g}.",
        "",
        "| N | D | naive (s) | vectorised (s) | speed-up | TAC |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {t.num} | {t.dim} | {t.naive_seconds:.4f} | {t.vectorised_seconds:.5f} | "
        f"{t.speed_up:.0f}x | {t.value:.6f} |"
        for t in timings
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs per implementation (best kept)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write")
    args = parser.parse_args(argv)
    sizes, dimensions = (QUICK_SIZES, QUICK_DIMENSIONS) if args.quick else (FULL_SIZES, FULL_DIMENSIONS)
    timings = run(sizes, dimensions, args.repeats)
    command = " ".join(["python", *sys.argv] if argv is None else ["python", "benchmarks/tac.py", *argv])
    table = render(timings, command, args.repeats)
    print(table)
    write_report(args.output, table)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

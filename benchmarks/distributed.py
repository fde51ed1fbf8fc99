"""Data-parallel training: epoch time and samples per second with one and two processes (torchrun).

    python benchmarks/distributed.py                  # N = 100 000, batch 32 and 512, 2 epochs each
    python benchmarks/distributed.py --quick          # N = 3 000, one epoch: a smoke test
    python benchmarks/distributed.py --output benchmarks/results/distributed.md

Every configuration is one real ``covserve-train fit`` (``python -m covserve.training``) on the synthetic
generator (M = 8 inputs, D = 4 targets), the default method (the W2 bound on ``residuals`` labels), the
same seed and global batch: one process with 1 thread, one process with 2 threads, and two ``torchrun``
ranks (gloo on 127.0.0.1) with 1 thread each. The table takes the last epoch (the first is a warm-up), its
training seconds without the label refresh, and the neighbour search's seconds from ``report.json`` (two
ranks search half of the query rows each). Samples per second are training rows over training seconds.
The final validation NLL of each run shows that they trained the same model. Last, the latency of one
gloo all-reduce between two processes on 127.0.0.1 (:data:`LATENCY_REPEATS` of them, median), which every
training step pays about :data:`COLLECTIVES_PER_STEP` times.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _arguments import positive_int
from _machine import describe_machine
from _report import write_report
from torch.multiprocessing.spawn import start_processes

FULL_SAMPLES = 100_000
QUICK_SAMPLES = 3_000
FULL_EPOCHS = 2
QUICK_EPOCHS = 1
BATCH_SIZES = (32, 512)
INPUT_DIM, TARGET_DIM = 8, 4
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "distributed.md"
LATENCY_REPEATS = 1000
LATENCY_FLOATS = 100
COLLECTIVES_PER_STEP = 22
"""Per step of the default network (5 residual blocks per network, one batch normalisation each): one
all-reduce per batch normalisation layer forward and one backward (20), DDP's gradient bucket (1), the
step's loss and divergence flag (1)."""


@dataclass(frozen=True)
class Setting:
    """One way to run the same training: ``processes`` ranks of ``threads`` threads each."""

    name: str
    processes: int
    threads: int


SETTINGS = (
    Setting("1 process, 1 thread", 1, 1),
    Setting("1 process, 2 threads", 1, 2),
    Setting("2 torchrun ranks, 1 thread each", 2, 1),
)


@dataclass(frozen=True)
class Measured:
    """The last epoch's training seconds (without the label refresh), its label seconds, the neighbour
    search's seconds, the run's wall seconds and final validation NLL, and the training rows."""

    training_seconds: float
    label_seconds: float
    search_seconds: float
    wall_seconds: float
    validation_nll: float
    rows: int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _fit(setting: Setting, samples: int, epochs: int, batch: int, root: Path) -> Measured:
    arguments = [
        "fit", "--data", "synthetic", "--in-dim", str(INPUT_DIM), "--out-dim", str(TARGET_DIM),
        "--samples", str(samples), "--epochs", str(epochs), "--batch-size", str(batch),
        "--threads", str(setting.threads), "--device", "cpu", "--no-progress",
        "--repository", str(root / "models"), "--run-dir", str(root / "runs"),
    ]  # fmt: skip
    launcher = [sys.executable]
    if setting.processes > 1:
        launcher += [
            "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(setting.processes),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(setting.threads)}
    started = time.perf_counter()
    subprocess.run(
        [*launcher, "-m", "covserve.training", *arguments], check=True, capture_output=True, env=environment
    )
    wall = time.perf_counter() - started
    (run,) = (root / "runs").iterdir()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    report = json.loads((run / "report.json").read_text())
    label_seconds = float(last.get("label_seconds", 0.0))
    return Measured(
        training_seconds=float(last["seconds"]) - label_seconds,
        label_seconds=label_seconds,
        search_seconds=float(report["neighbour_search"]["seconds"]),
        wall_seconds=wall,
        validation_nll=float(last["val_nll"]),
        rows=int(report["data"]["split_sizes"]["train"]),
    )


def _all_reduce_latency(rank: int, port: int, results: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    values = torch.zeros(LATENCY_FLOATS)
    seconds = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        dist.all_reduce(values)
        seconds.append(time.perf_counter() - started)
    if rank == 0:
        results.append(statistics.median(seconds))
    dist.destroy_process_group()


def _collective_latency() -> float:
    """Median seconds of one gloo all-reduce of :data:`LATENCY_FLOATS` floats between two processes."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        results = manager.list()
        start_processes(_all_reduce_latency, args=(_free_port(), results), nprocs=2, start_method="spawn")  # type: ignore[no-untyped-call]
        return float(results[0])


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> None:
    """Run every setting at every batch size, print the table and write it to ``--output``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"N = {QUICK_SAMPLES}, one epoch: a smoke test")
    parser.add_argument("--samples", type=positive_int, default=None, help=f"rows (default {FULL_SAMPLES})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write")
    args = parser.parse_args(argv)
    samples = args.samples or (QUICK_SAMPLES if args.quick else FULL_SAMPLES)
    epochs = QUICK_EPOCHS if args.quick else FULL_EPOCHS
    flags = (" --quick" if args.quick else "") + (f" --samples {args.samples}" if args.samples else "")
    lines = [
        "# Data-parallel training: one process against two torchrun ranks",
        "",
        f"Command: `python benchmarks/distributed.py{flags}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {describe_machine(('torch', torch.__version__))}  ",
        f"Load average at the start: {_load()}",
        "",
        f"Synthetic data, M = {INPUT_DIM}, D = {TARGET_DIM}, N = {samples} (80 % training rows), the default "
        f"method and labels, {epochs} epoch(s); the last epoch is measured. Speed-up is against one process "
        "with one thread at the same batch size.",
        "",
        "| global batch | setting | training s (last epoch) | samples/s | speed-up | label refresh s | "
        "neighbour search s | wall s (whole fit) | final validation NLL |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in BATCH_SIZES:
        baseline: float | None = None
        for setting in SETTINGS:
            with tempfile.TemporaryDirectory(prefix="covserve-ddp-") as scratch:
                measured = _fit(setting, samples, epochs, batch, Path(scratch))
            rate = measured.rows / measured.training_seconds
            baseline = baseline or rate
            lines.append(
                f"| {batch} | {setting.name} | {measured.training_seconds:.2f} | {rate:.0f} | "
                f"{rate / baseline:.2f} | {measured.label_seconds:.2f} | {measured.search_seconds:.2f} | "
                f"{measured.wall_seconds:.1f} | {measured.validation_nll:.4f} |"
            )
            print(lines[-1], flush=True)
            write_report(args.output, "\n".join(lines) + "\n")
    latency = _collective_latency()
    lines += [
        "",
        f"One gloo all-reduce of {LATENCY_FLOATS} floats between two processes on 127.0.0.1: "
        f"{latency * 1e6:.0f} µs (median of {LATENCY_REPEATS}); a training step makes about "
        f"{COLLECTIVES_PER_STEP}, {COLLECTIVES_PER_STEP * latency * 1e3:.1f} ms.",
        "",
        f"Load average at the end: {_load()}",
    ]
    print("\n".join(lines))
    write_report(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Training cost on the GPU against the CPU, side by side in one process: the W2 bound, NLL, NLL-TIC, MSE.

    python benchmarks/gpu.py                    # D = 20 (the largest synthetic dimension); CPU and CUDA
    python benchmarks/gpu.py --quick            # D = 3, 300 rows: a smoke test (CPU alone without a GPU)
    python benchmarks/gpu.py --dim 20 --samples-per-dim 50 --output benchmarks/results/gpu/gpu.md

Data: the synthetic benchmark's generator (``training.synthetic.multivariate(D, D, samples_per_dim · D)``,
split 80/10/10, seed 0). Each method trains two epochs on each device with the trainer (batch 32, AdamW,
default network) and the second epoch's training-loop wall time is kept: the first also pays for CUDA's
start (kernel loading, library handles). An epoch's time is proportional to its training rows, so the
table gives the measured epoch, the milliseconds per batch of 32 and the epoch they imply at the synthetic
benchmark's default size (1 000·D rows, 80 % of them for training). The CPU uses every core unless
``--cpu-threads`` says otherwise (the other benchmarks use one thread: their figures are not comparable with
these). Peak memory is the trainer's: allocated device memory on CUDA, RSS growth on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from _arguments import positive_int
from _machine import describe_machine
from _report import write_report

from covserve.training.config import Device, ModelConfig, TrainConfig
from covserve.training.data import DataConfig, Split, load_split
from covserve.training.losses import LossName
from covserve.training.pseudolabels import LabelScheme
from covserve.training.trainer import train

FULL_DIM = 20
QUICK_DIM = 3
FULL_SAMPLES_PER_DIM = 50
QUICK_SAMPLES_PER_DIM = 100
DEFAULT_SIZE_SAMPLES_PER_DIM = 1000
"""Rows per target dimension of ``benchmarks/synthetic.py`` at its default size."""
TRAIN_FRACTION = 0.8
EPOCHS = 2
SEED = 0
BATCH_SIZE = TrainConfig().batch_size
METHODS = (LossName.MSE, LossName.NLL, LossName.W2_BOUND, LossName.NLL_TIC)
MILLISECONDS = 1000.0
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "gpu" / "gpu.md"


@dataclass(frozen=True)
class EpochCost:
    """One method on one device: the kept epoch's seconds, its batches and the training's peak memory."""

    method: str
    device: str
    seconds: float
    batches: int
    peak_memory_mib: float

    @property
    def milliseconds_per_batch(self) -> float:
        return self.seconds / self.batches * MILLISECONDS

    def default_size_seconds(self, dim: int) -> float:
        """The epoch at ``benchmarks/synthetic.py``'s default size, from the time per batch (s)."""
        rows = int(DEFAULT_SIZE_SAMPLES_PER_DIM * dim * TRAIN_FRACTION)
        return self.seconds / self.batches * -(-rows // BATCH_SIZE)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"D = {QUICK_DIM}, a smoke test")
    parser.add_argument(
        "--dim", type=positive_int, default=None, help=f"target and input dimension (default {FULL_DIM})"
    )
    parser.add_argument(
        "--samples-per-dim", type=positive_int, default=None, help="rows per target dimension"
    )
    parser.add_argument(
        "--devices", default=None, help="comma-separated: cpu, cuda (default: cpu, and cuda when available)"
    )
    parser.add_argument(
        "--cpu-threads", type=positive_int, default=None, help="torch threads on the CPU (default: all)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file (JSON beside it)")
    return parser.parse_args(argv)


def _devices(text: str | None) -> list[Device]:
    if text is None:
        return [Device.CPU, Device.CUDA] if torch.cuda.is_available() else [Device.CPU]
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in (Device.CPU.value, Device.CUDA.value) for name in names):
        raise SystemExit(f"--devices: expected a comma-separated list of cpu and cuda, got {text!r}")
    devices = [Device(name) for name in names]
    if Device.CUDA in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device is available")
    return devices


def _measure(method: LossName, split: Split, device: Device) -> EpochCost:
    config = TrainConfig(
        method=method,
        labels=LabelScheme.TARGETS,  # the labels of the committed GPU runs (computed once, before epoch 1)
        epochs=EPOCHS,
        seed=SEED,
        device=device,
        calibrate=False,
        batch_size=BATCH_SIZE,
    )
    with tempfile.TemporaryDirectory(prefix="covserve-gpu-bench-") as scratch:
        result = train(split, config, ModelConfig(), run_dir=Path(scratch), progress=False)
    batches = -(-len(split.train) // config.batch_size)
    return EpochCost(
        method.value, device.value, result.history[-1]["seconds"], batches, result.peak_memory_mib
    )


def _gpu_name() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"


def _ratio_rows(costs: list[EpochCost], devices: list[Device]) -> list[str]:
    seconds = {(c.method, c.device): c.seconds for c in costs}
    pairs = (
        ("W2 bound ÷ MSE", LossName.W2_BOUND, LossName.MSE),
        ("W2 bound ÷ NLL", LossName.W2_BOUND, LossName.NLL),
        ("NLL-TIC ÷ W2 bound", LossName.NLL_TIC, LossName.W2_BOUND),
    )
    lines = ["| ratio (s / epoch) | " + " | ".join(d.value for d in devices) + " |"]
    lines.append("|---|" + "---:|" * len(devices))
    for title, top, bottom in pairs:
        cells = [f"{seconds[top.value, d.value] / seconds[bottom.value, d.value]:.2f}" for d in devices]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def _report(costs: list[EpochCost], devices: list[Device], dim: int, rows: int, command: str) -> str:
    lines = [
        "# Training cost: GPU against CPU",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        "Machine: " + describe_machine(("PyTorch", torch.__version__)) + f"; GPU: {_gpu_name()}  ",
        f"Setup: D_in = D = {dim}, {rows} rows (80/10/10), batch {BATCH_SIZE}, the second of "
        f"{EPOCHS} epochs kept, {torch.get_num_threads()} torch threads on the CPU.",
        "",
        "| method | device | s / epoch (measured) | ms / batch | s / epoch at default size | peak MiB |"
        " CPU ÷ GPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(c.method, c.device): c for c in costs}
    for cost in costs:
        cpu = by_key.get((cost.method, Device.CPU.value))
        speedup = f"{cpu.seconds / cost.seconds:.1f}" if cpu and cost.device == Device.CUDA.value else ""
        lines.append(
            f"| {cost.method} | {cost.device} | {cost.seconds:.3g} | {cost.milliseconds_per_batch:.3g} | "
            f"{cost.default_size_seconds(dim):.3g} | {cost.peak_memory_mib:.3g} | {speedup} |"
        )
    return "\n".join([*lines, "", *_ratio_rows(costs, devices), ""])


def main(argv: Sequence[str] | None = None) -> None:
    """Train each method on each device, then print and write the table."""
    args = _arguments(argv)
    dim = args.dim or (QUICK_DIM if args.quick else FULL_DIM)
    samples_per_dim = args.samples_per_dim or (QUICK_SAMPLES_PER_DIM if args.quick else FULL_SAMPLES_PER_DIM)
    devices = _devices(args.devices)
    torch.set_num_threads(args.cpu_threads or os.cpu_count() or 1)
    split = load_split(DataConfig(in_dim=dim, out_dim=dim, samples=samples_per_dim * dim, seed=SEED))
    costs: list[EpochCost] = []
    started = time.perf_counter()
    for method in METHODS:
        for device in devices:
            costs.append(_measure(method, split, device))
            print(json.dumps(asdict(costs[-1])), flush=True)
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:])
    report = _report(costs, devices, dim, samples_per_dim * dim, command)
    report += f"\nWall time {time.perf_counter() - started:.0f} s.\n"
    print(report)
    write_report(args.output, report)
    write_report(args.output.with_suffix(".json"), json.dumps([asdict(c) for c in costs], indent=2) + "\n")


if __name__ == "__main__":
    main()

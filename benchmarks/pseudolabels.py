"""Pseudo-label cost and quality per neighbour index: seconds, peak memory and recall against N; the k / τ
ablation.

    python benchmarks/pseudolabels.py                # N = 1k … 1M at M = 8 and 32, D = 4, every index
    python benchmarks/pseudolabels.py --max-samples 100000   # stop at 100k
    python benchmarks/pseudolabels.py --indexes kdtree,faiss # some indexes only
    python benchmarks/pseudolabels.py --indexes kdtree --input-dims 8 --sizes 10000000 --cost-only
    python benchmarks/pseudolabels.py --quick        # tiny sizes, a smoke test
    python benchmarks/pseudolabels.py --output benchmarks/results/pseudolabels.md
    python benchmarks/pseudolabels.py --schemes --output benchmarks/results/label_schemes.md
    python benchmarks/pseudolabels.py --demo-baseline /tmp/old --output benchmarks/results/demo_labels.md

``--demo-baseline CHECKOUT`` times the demo run's label step (``configs/demo.yaml``: the neighbour search
and the first labels of its 3 200 training rows, one thread) in this checkout and in another one (a
``git worktree`` of an earlier revision), alternating child processes, :data:`DEMO_ROUNDS` rounds of
:data:`DEMO_REPEATS` repeats each.

``--schemes`` compares the label schemes instead: the error of each against the true Σ(x) for D = 4 to 20
and k = 16 to 512, with ``residuals`` from a trained mean network (MSE, the synthetic benchmark's epochs
and learning rate) and from the true mean (its limit), and the cost of one ``residuals`` refresh against
one training epoch, measured side by side in one training run.

Every cell (index, M, N) computes the neighbours and the ``targets`` labels of uniform random inputs
(``torch.rand``, the hardest case for an index: their intrinsic dimension is M) with
:data:`SEARCH_THREADS` threads, in a fresh child process so its peak resident memory (``ru_maxrss``) is its
own. The exact search is ``O(N² M)`` and runs up to :data:`EXACT_MAX_SAMPLES`; the k-d tree degrades
towards a scan as M grows and runs at M = 32 up to :data:`KDTREE_HIGH_DIM_MAX_SAMPLES`. Recall is the one
the FAISS search measures on its own sample (exact indexes: "exact"). The growth column should rise with
``N · k`` and never with ``N²``: the last column divides the growth by ``N · k`` (bytes per label
neighbour). The table is rewritten to ``--output`` after every cell, so an interrupted run keeps what it
measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _arguments import positive_int, positive_ints
from _machine import describe_machine
from _report import write_report

from covserve.training.config import Device, ModelConfig, TrainConfig
from covserve.training.data import DataConfig, load_split
from covserve.training.losses import LossName
from covserve.training.pseudolabels import (
    DEFAULT_NEIGHBOURS,
    LabelScheme,
    Neighbourhoods,
    NeighbourIndex,
    TemperatureScale,
    compute_pseudo_labels,
    default_neighbours,
    find_neighbourhoods,
    labels_from_neighbourhoods,
)
from covserve.training.synthetic import multivariate
from covserve.training.trainer import predict_raw, train

FULL_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 3_000)
INDEXES = (NeighbourIndex.EXACT, NeighbourIndex.KDTREE, NeighbourIndex.FAISS)
EXACT_MAX_SAMPLES = 100_000
"""Beyond this the exact search takes over an hour per size (the committed 1M figures are quoted)."""
KDTREE_HIGH_DIM_MAX_SAMPLES = 100_000
KDTREE_HIGH_DIM = 16
"""From this many inputs the k-d tree stops at :data:`KDTREE_HIGH_DIM_MAX_SAMPLES`."""
SEARCH_THREADS = 2
EXACT_MILLION_SECONDS = {8: 4147.68, 32: 3666.51}
"""``benchmarks/results/pseudolabels.md`` of 2026-11-26, the exact search alone at N = 1 000 000."""
INPUT_DIMS = (8, 32)
QUICK_INPUT_DIMS = (8,)
TARGET_DIM = 4
BYTES_PER_MIB = 1 << 20
FULL_NEIGHBOURS = (8, 16, 32, 64, 128, 256)
QUICK_NEIGHBOURS = (16, 64)
ABLATION_TEMPERATURES: tuple[tuple[TemperatureScale, float], ...] = (
    (TemperatureScale.ABSOLUTE, 0.1),
    (TemperatureScale.ABSOLUTE, 1.0),
    (TemperatureScale.RELATIVE, 0.3),
    (TemperatureScale.RELATIVE, 1.0),
    (TemperatureScale.RELATIVE, 3.0),
    (TemperatureScale.RELATIVE, math.inf),
)
KIB_PER_MIB = 1024
SCHEME_DIMS = (4, 8, 12, 16, 20)
QUICK_SCHEME_DIMS = (3,)
SCHEME_NEIGHBOURS = (16, 32, 64, 128, 256, 512)
MEAN_EPOCHS = 20
"""Epochs of the MSE mean network behind the ``residuals`` row: the synthetic benchmark's maximum."""
MEAN_LEARNING_RATE = 1e-3
REFRESH_DIM = 8
REFRESH_SAMPLES = 8000
REFRESH_EPOCHS = 4
DEMO_ROUNDS = 5
DEMO_REPEATS = 15
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEMO_CHILD = """
import inspect, json, time
from pathlib import Path
import torch
from covserve.training import trainer
from covserve.training.config import load_config
from covserve.training.data import load_split
config = load_config(Path({config!r}), {{}})
split = load_split(config.data)
model = trainer.build_model(split, config.train, config.model)
torch.set_num_threads(config.train.threads)
extra = (trainer.SINGLE,) if len(inspect.signature(trainer._run_labels).parameters) == 4 else ()
seconds = []
for _ in range({repeats}):
    started = time.perf_counter()
    trainer._run_labels(model, split.train, config.train, *extra)
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""
"""Run in a child with the checkout first on ``sys.path``; ``_run_labels`` gained a ``ranks`` argument in
issue 24, so the child passes one only where it takes one."""


@dataclass(frozen=True)
class CostRow:
    """One cell: wall seconds, peak resident memory of the child before and after (MiB), the recall
    measured by an approximate index (``None``: exact) and the search's seconds and parameters."""

    samples: int
    seconds: float
    baseline_mib: float
    peak_mib: float
    recall: float | None
    search_seconds: float
    parameters: dict[str, object]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def _single(samples: int, input_dim: int, index: NeighbourIndex) -> None:
    """Child mode: time one search and its labels on random data and print a JSON line."""
    torch.set_num_threads(SEARCH_THREADS)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(samples, input_dim, dtype=torch.float64, generator=generator)
    targets = torch.randn(samples, TARGET_DIM, dtype=torch.float32, generator=generator)
    baseline = _peak_rss_mib()
    start = time.perf_counter()
    found = find_neighbourhoods(inputs, neighbours=DEFAULT_NEIGHBOURS, index=index, threads=SEARCH_THREADS)
    labels_from_neighbourhoods(found, targets, LabelScheme.TARGETS)
    seconds = time.perf_counter() - start
    assert found.search is not None, "find_neighbourhoods always reports its search"
    record = {
        "samples": samples,
        "seconds": seconds,
        "baseline": baseline,
        "peak": _peak_rss_mib(),
        "recall": found.search.recall,
        "search_seconds": found.search.seconds,
        "parameters": found.search.parameters,
    }
    print(json.dumps(record))


def _cost(samples: int, input_dim: int, index: NeighbourIndex) -> CostRow:
    command = [
        sys.executable, __file__, "--single", str(samples),
        "--input-dim", str(input_dim), "--index", index.value,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    return CostRow(
        samples,
        record["seconds"],
        record["baseline"],
        record["peak"],
        record["recall"],
        record["search_seconds"],
        record["parameters"],
    )


def _runs(index: NeighbourIndex, input_dim: int, samples: int) -> bool:
    """Whether the full table has this cell (module docstring)."""
    if index is NeighbourIndex.EXACT:
        return samples <= EXACT_MAX_SAMPLES
    if index is NeighbourIndex.KDTREE and input_dim >= KDTREE_HIGH_DIM:
        return samples <= KDTREE_HIGH_DIM_MAX_SAMPLES
    return True


def _relative_frobenius(estimate: np.ndarray, truth: np.ndarray) -> float:
    difference = np.linalg.norm((estimate - truth).reshape(len(truth), -1), axis=1)
    return float(np.mean(difference / np.linalg.norm(truth.reshape(len(truth), -1), axis=1)))


def _ablation(dims: tuple[int, ...], neighbours: tuple[int, ...]) -> list[str]:
    lines = ["| D (N) | weights | " + " | ".join(f"k = {k}" for k in neighbours) + " |"]
    lines.append("|---|---|" + "---:|" * len(neighbours))
    for dim in dims:
        data = multivariate(dim, dim, 1000 * dim, seed=0)
        inputs, targets = torch.from_numpy(data.inputs), torch.from_numpy(data.targets)
        homoscedastic = np.broadcast_to(np.cov(data.targets.T), data.covariance.shape)
        for scale, temperature in ABLATION_TEMPERATURES:
            errors = [
                _relative_frobenius(
                    compute_pseudo_labels(
                        inputs, targets, neighbours=k, temperature=temperature, temperature_scale=scale
                    ).covariance.numpy(),
                    data.covariance,
                )
                for k in neighbours
            ]
            label = "uniform" if math.isinf(temperature) else f"{scale.value} τ = {temperature:g}"
            cells = " | ".join(f"{error:.3f}" for error in errors)
            lines.append(f"| {dim} ({1000 * dim}) | {label} | {cells} |")
        global_error = _relative_frobenius(homoscedastic, data.covariance)
        lines.append(f"| {dim} ({1000 * dim}) | global sample covariance | {global_error:.3f} |")
    return lines


def _trained_mean(split_seed: int, dim: int, samples: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw-unit mean predictions ``(N, D)`` of an MSE network on the training rows of the synthetic split,
    and those rows' true mean ``(N, D)``."""
    split = load_split(DataConfig(in_dim=dim, out_dim=dim, samples=samples, seed=split_seed))
    config = TrainConfig(
        method=LossName.MSE, epochs=epochs, lr=MEAN_LEARNING_RATE, device=Device.CPU, calibrate=False
    )
    with tempfile.TemporaryDirectory(prefix="covserve-labels-") as scratch:
        result = train(split, config, ModelConfig(), run_dir=Path(scratch), progress=False)
    predictions, _ = predict_raw(result.model, split.train.inputs, torch.device("cpu"))
    assert split.train.true_mean is not None, "the synthetic generator always carries its true mean"
    return predictions, split.train.true_mean


def _scheme_error(
    neighbourhoods: Neighbourhoods,
    targets: torch.Tensor,
    truth: np.ndarray,
    scheme: LabelScheme,
    mean: np.ndarray | None,
) -> str:
    """The mean relative Frobenius error of ``scheme``'s labels against ``truth``, formatted."""
    predictions = None if mean is None else torch.from_numpy(mean)
    labels = labels_from_neighbourhoods(neighbourhoods, targets, scheme, predictions=predictions)
    return f"{_relative_frobenius(labels.covariance.numpy(), truth):.3f}"


def _schemes(
    dims: tuple[int, ...], neighbours: tuple[int, ...], epochs: int, samples_per_dim: int
) -> list[str]:
    """Mean relative Frobenius error of every scheme against the truth on the synthetic training rows."""
    lines = ["| D (N) | scheme | " + " | ".join(f"k = {k}" for k in neighbours) + " |"]
    lines.append("|---|---|" + "---:|" * len(neighbours))
    for dim in dims:
        split = load_split(DataConfig(in_dim=dim, out_dim=dim, samples=samples_per_dim * dim, seed=0))
        table = split.train
        predictions, true_mean = _trained_mean(0, dim, samples_per_dim * dim, epochs)
        inputs, targets = torch.from_numpy(table.inputs), torch.from_numpy(table.targets)
        truth = table.true_covariance
        assert truth is not None, "the synthetic generator always carries its true covariance"
        rows: dict[str, list[str]] = {
            "targets": [],
            "local-linear": [],
            "residuals (trained MSE mean)": [],
            "residuals (true mean)": [],
        }
        for k in neighbours:
            found = find_neighbourhoods(inputs, neighbours=min(k, len(table) - 1))
            rows["targets"].append(_scheme_error(found, targets, truth, LabelScheme.TARGETS, None))
            rows["local-linear"].append(
                _scheme_error(found, targets, truth, LabelScheme.LOCAL_LINEAR, None) if k >= dim + 2 else "—"
            )
            rows["residuals (trained MSE mean)"].append(
                _scheme_error(found, targets, truth, LabelScheme.RESIDUALS, predictions)
            )
            rows["residuals (true mean)"].append(
                _scheme_error(found, targets, truth, LabelScheme.RESIDUALS, true_mean)
            )
        for name, cells in rows.items():
            lines.append(f"| {dim} ({len(table)}) | {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return lines


def _refresh_cost(dim: int, samples: int, epochs: int) -> list[str]:
    """One ``w2-bound --labels residuals`` run: each refresh's seconds beside its epoch's training seconds."""
    split = load_split(DataConfig(in_dim=dim, out_dim=dim, samples=samples, seed=0))
    config = TrainConfig(
        method=LossName.W2_BOUND,
        labels=LabelScheme.RESIDUALS,
        epochs=epochs,
        lr=MEAN_LEARNING_RATE,
        device=Device.CPU,
        patience=epochs,
    )
    with tempfile.TemporaryDirectory(prefix="covserve-refresh-") as scratch:
        result = train(split, config, ModelConfig(), run_dir=Path(scratch), progress=False)
    lines = [
        f"`w2-bound --labels residuals --label-refresh 1`, D = {dim}, N = {samples} "
        f"({len(split.train)} training rows), k = {default_neighbours(LabelScheme.RESIDUALS)}, one process; "
        f"load average after the run {', '.join(f'{value:.2f}' for value in os.getloadavg())}:",
        "",
        "| epoch | refresh seconds | training seconds (the rest of the epoch) | refresh ÷ training |",
        "|---:|---:|---:|---:|",
    ]
    for record in result.history:
        refresh = record["label_seconds"]
        training = record["seconds"] - refresh
        ratio = "— (warm-up: targets labels)" if refresh == 0.0 else f"{refresh / training:.3f}"
        lines.append(f"| {int(record['epoch'])} | {refresh:.3f} | {training:.3f} | {ratio} |")
    return lines


def _scheme_report(quick: bool) -> list[str]:
    dims = QUICK_SCHEME_DIMS if quick else SCHEME_DIMS
    neighbours = QUICK_NEIGHBOURS if quick else SCHEME_NEIGHBOURS
    epochs = 1 if quick else MEAN_EPOCHS
    samples_per_dim = 200 if quick else 1000
    lines = [
        "# Pseudo-label schemes: error against the true Σ(x), and the cost of a refresh",
        "",
        f"Command: `python benchmarks/pseudolabels.py --schemes{' --quick' if quick else ''}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {describe_machine(('torch', torch.__version__))}  ",
        f"Load average at the start: {', '.join(f'{value:.2f}' for value in os.getloadavg())}",
        "",
        "## Label error",
        "",
        f"TIC-TAC synthetic generator, D → D, the training rows (80 %) of the benchmark's split of "
        f"{samples_per_dim}·D rows, seed 0; mean relative Frobenius error ‖Σ̃ − Σ‖_F / ‖Σ‖_F, lower is "
        f"better. The trained mean is an MSE network ({epochs} epochs, lr {MEAN_LEARNING_RATE:g}, early "
        "stopping on validation MSE); the true mean is the residuals scheme's limit. local-linear needs "
        "k ≥ D + 2 (—).",
        "",
    ]
    lines += _schemes(dims, neighbours, epochs, samples_per_dim)
    lines += ["", "## Cost of a refresh", ""]
    refresh_dim, refresh_samples = (3, 600) if quick else (REFRESH_DIM, REFRESH_SAMPLES)
    lines += _refresh_cost(refresh_dim, refresh_samples, 2 if quick else REFRESH_EPOCHS)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables and write them to ``--output``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    parser.add_argument("--max-samples", type=positive_int, default=None, help="skip sizes above this N")
    parser.add_argument(
        "--sizes", type=positive_ints, default=None, help="comma-separated N to measure instead of 1k…1M"
    )
    parser.add_argument(
        "--input-dims", type=positive_ints, default=None, help="comma-separated M instead of 8,32"
    )
    parser.add_argument("--cost-only", action="store_true", help="skip the k/τ ablation")
    parser.add_argument(
        "--schemes", action="store_true", help="compare the label schemes (error and refresh cost) instead"
    )
    parser.add_argument(
        "--demo-baseline",
        type=Path,
        default=None,
        help="checkout of an earlier revision: time the demo's label step here and there instead",
    )
    parser.add_argument("--single", type=positive_int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input-dim", type=positive_int, default=INPUT_DIMS[0], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=NeighbourIndex, default=NeighbourIndex.EXACT, help=argparse.SUPPRESS)
    parser.add_argument(
        "--indexes",
        type=_indexes,
        default=",".join(index.value for index in INDEXES),
        help="comma-separated neighbour indexes to measure (default: all)",
    )
    args = parser.parse_args(argv)
    if args.single is not None:
        _single(args.single, args.input_dim, args.index)
        return
    if args.demo_baseline is not None:
        lines = _demo_report(args.demo_baseline.resolve(), 1 if args.quick else DEMO_ROUNDS)
        print("\n".join(lines))
        _write(args.output, lines)
        return
    if args.schemes:
        lines = _scheme_report(args.quick)
        print("\n".join(lines))
        _write(args.output, lines)
        return

    planned = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    sizes = [n for n in planned if n <= (args.max_samples or n)]
    skipped = [n for n in planned if not args.quick and n not in sizes]
    input_dims = args.input_dims or (QUICK_INPUT_DIMS if args.quick else INPUT_DIMS)
    flags = (" --quick" if args.quick else "") + (
        f" --max-samples {args.max_samples}" if args.max_samples else ""
    )
    if args.indexes != ",".join(index.value for index in INDEXES):
        flags += f" --indexes {args.indexes}"
    for name, values in (("--input-dims", args.input_dims), ("--sizes", args.sizes)):
        flags += f" {name} {','.join(str(value) for value in values)}" if values else ""
    flags += " --cost-only" if args.cost_only else ""
    indexes = [NeighbourIndex(name) for name in _split(args.indexes)]
    lines = [
        "# Pseudo-label cost and quality",
        "",
        f"Command: `python benchmarks/pseudolabels.py{flags}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {describe_machine(('torch', torch.__version__), ('faiss', _faiss_version()))}  ",
        f"Load average at the start: {_load()}",
        "",
        f"## Cost per neighbour index (D = {TARGET_DIM} targets, k = {DEFAULT_NEIGHBOURS}, "
        f"{SEARCH_THREADS} threads)",
        "",
        "Seconds are the neighbours and the `targets` labels together; search seconds the neighbours alone. "
        "Uniform random inputs. The exact search at N = 1 000 000 is not rerun (over an hour each): the "
        f"committed figures of 2026-11-26 were {EXACT_MILLION_SECONDS[8]:.0f} s at M = 8 and "
        f"{EXACT_MILLION_SECONDS[32]:.0f} s at M = 32.",
        "",
        "| index | M (inputs) | N | seconds | search seconds | peak RSS (MiB) | growth over baseline (MiB) | "
        "growth ÷ (N·k), bytes | recall | parameters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for index in indexes:
        for input_dim in input_dims:
            for samples in sizes:
                if not args.quick and not _runs(index, input_dim, samples):
                    continue
                row = _cost(samples, input_dim, index)
                growth = row.peak_mib - row.baseline_mib
                per_neighbour = growth * BYTES_PER_MIB / (samples * DEFAULT_NEIGHBOURS)
                recall = "exact" if row.recall is None else f"{row.recall:.4f}"
                settings = ", ".join(
                    f"{key} {value}"
                    for key, value in row.parameters.items()
                    if key not in ("kind", "threads")
                )
                lines.append(
                    f"| {index.value} | {input_dim} | {samples} | {row.seconds:.2f} | "
                    f"{row.search_seconds:.2f} | {row.peak_mib:.0f} | {growth:.0f} | {per_neighbour:.1f} | "
                    f"{recall} | {settings} |"
                )
                print(lines[-1], flush=True)
                _write(args.output, lines)
    lines += ["", f"Load average at the end: {_load()}"]
    if skipped:
        lines += ["", f"Not run here (`--max-samples`): N = {', '.join(str(n) for n in skipped)}."]
    if args.cost_only:
        _write(args.output, lines)
        return
    lines += [
        "",
        "## Ablation: mean relative Frobenius error of the labels against the true Σ(x)",
        "",
        "TIC-TAC synthetic generator, D → D dimensions, N = 1000·D, seed 0. Lower is better.",
        "",
    ]
    lines += _ablation((2,) if args.quick else (4, 8), QUICK_NEIGHBOURS if args.quick else FULL_NEIGHBOURS)
    print("\n".join(lines))
    _write(args.output, lines)


def _demo_seconds(checkout: Path) -> list[float]:
    """The label step's seconds, :data:`DEMO_REPEATS` times, in a child importing ``checkout``'s covserve."""
    code = DEMO_CHILD.format(config=str(DEMO_CONFIG), repeats=DEMO_REPEATS)
    environment = {**os.environ, "PYTHONPATH": str(checkout)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        cwd=checkout,
    )
    seconds: list[float] = json.loads(result.stdout.strip().splitlines()[-1])
    return seconds


def _demo_report(baseline: Path, rounds: int) -> list[str]:
    here = Path(__file__).resolve().parent.parent
    lines = [
        "# The demo's label step: this checkout against an earlier one",
        "",
        f"Command: `python benchmarks/pseudolabels.py --demo-baseline {baseline}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {describe_machine(('torch', torch.__version__))}  ",
        f"Load average at the start: {_load()}",
        "",
        f"`configs/demo.yaml`: the neighbour search and first labels of its training rows, one thread; "
        f"{rounds} rounds, each the baseline's child then this checkout's, {DEMO_REPEATS} repeats per child.",
        "",
        "| round | baseline median s | this checkout median s | ratio (this ÷ baseline) |",
        "|---:|---:|---:|---:|",
    ]
    ratios = []
    for number in range(1, rounds + 1):
        old, new = float(np.median(_demo_seconds(baseline))), float(np.median(_demo_seconds(here)))
        ratios.append(new / old)
        lines.append(f"| {number} | {old:.4f} | {new:.4f} | {new / old:.3f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Median ratio: {float(np.median(ratios)):.3f}. Load average at the end: {_load()}"]
    return lines


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _indexes(value: str) -> str:
    """``--indexes``: known index names (``auto`` is not one: the table compares concrete indexes)."""
    valid = [index.value for index in INDEXES]
    unknown = [name for name in _split(value) if name not in valid]
    if unknown or not _split(value):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {', '.join(valid)}, got {value!r}"
        )
    return value


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def _faiss_version() -> str:
    import faiss

    version: str = faiss.__version__
    return version


def _write(output: Path | None, lines: list[str]) -> None:
    if output is not None:
        write_report(output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

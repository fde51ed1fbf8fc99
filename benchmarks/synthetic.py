"""Synthetic multivariate benchmark (ToSS §5.2, TIC-TAC's generator): every method, dimensions 4 to 20.

    python benchmarks/synthetic.py                     # D = 4, 8, 12, 16, 20; 5 trials; 20 epochs
    python benchmarks/synthetic.py --quick             # D = 2, 3; 1 trial; 1 epoch: a smoke test
    python benchmarks/synthetic.py --dims 4,8 --trials 3 --epochs 10 --methods w2-bound,nll

Data: ``training.synthetic.multivariate(D, D, samples_per_dim · D)`` (input dimension equal to the target
dimension, as in TIC-TAC), split 80/10/10 with the trial's seed; the true Σ(x) is known, so the test
metrics include KL(truth ‖ prediction) and the squared 2-Wasserstein distance to the truth. Each trial
trains every method from the same initial weights on the same batches (AdamW, ``--lr``, batch 32, early
stopping on validation NLL) without the post-training variance calibration, as in the paper. Cost is the
mean wall seconds per epoch and the peak memory during training (RSS growth on CPU), both plotted against
D. Writes ``synthetic.md``, ``synthetic_cost.png`` and ``synthetic_accuracy.png`` to ``--output-dir``, with
every fit's metrics in ``synthetic.json`` as it finishes; ``--resume`` reuses those (same settings only).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
import torch
from _arguments import positive_int, positive_ints
from _machine import describe_machine
from _methods import fit_and_score, parse_methods
from _report import write_report
from _store import FitStore, add_store_arguments

from covserve.training.atomic import write_atomically
from covserve.training.compare import Result, markdown_table, mean_and_spread
from covserve.training.config import ModelConfig
from covserve.training.data import DataConfig, load_split

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FULL_DIMS = (4, 8, 12, 16, 20)
QUICK_DIMS = (2, 3)
FULL_TRIALS = 5
FULL_EPOCHS = 20
SAMPLES_PER_DIM = 1000
QUICK_SAMPLES_PER_DIM = 100
LEARNING_RATE = 1e-3
ACCURACY_COLUMNS = (
    ("mse", "MSE"),
    ("nll", "NLL"),
    ("tac", "TAC"),
    ("kl_to_truth", "KL to truth"),
    ("w2_to_truth", "W2² to truth"),
)
COST_COLUMNS = (("seconds_per_epoch", "s / epoch"), ("peak_memory_mib", "peak MiB"))
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
STORE_NAME = "synthetic.json"
FIGURE_DPI = 110


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one trial and epoch: a smoke test")
    parser.add_argument("--dims", type=positive_ints, default=None, help="comma-separated target dimensions")
    parser.add_argument(
        "--trials", type=positive_int, default=None, help=f"trials per cell (default {FULL_TRIALS})"
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help=f"maximum epochs (default {FULL_EPOCHS})"
    )
    parser.add_argument(
        "--samples-per-dim", type=positive_int, default=None, help="rows per target dimension"
    )
    parser.add_argument("--methods", default="all", help="comma-separated methods or 'all'")
    parser.add_argument(
        "--tic-max-dim",
        type=positive_int,
        default=None,
        help="skip nll-tic above this D (its Hessians take O(D·M) network passes a row; default: never skip)",
    )
    add_store_arguments(parser, DEFAULT_OUTPUT, STORE_NAME)
    return parser.parse_args(argv)


def _plot(
    results: dict[int, list[Result]], methods: list[str], columns: tuple[tuple[str, str], ...], path: Path
) -> None:
    dims = sorted(results)
    figure, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 4.2))
    for axis, (key, title) in zip(np.atleast_1d(axes), columns, strict=True):
        for method in methods:
            stats = [mean_and_spread(results[d], method, key) for d in dims]
            means = np.array([s[0] for s in stats])
            spreads = np.array([s[1] for s in stats])
            if np.all(np.isnan(means)):
                continue
            axis.errorbar(dims, means, yerr=spreads, label=method, marker="o", capsize=3)
        axis.set_xlabel("target dimension D")
        axis.set_title(title)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    figure.tight_layout()
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=FIGURE_DPI))
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every method on every dimension and trial, then write the tables and plots."""
    args = _arguments(argv)
    dims = args.dims or (QUICK_DIMS if args.quick else FULL_DIMS)
    trials = args.trials or (1 if args.quick else FULL_TRIALS)
    epochs = args.epochs or (1 if args.quick else FULL_EPOCHS)
    samples_per_dim = args.samples_per_dim or (QUICK_SAMPLES_PER_DIM if args.quick else SAMPLES_PER_DIM)
    methods = parse_methods(args.methods)
    names = [m.name for m in methods]
    torch.set_num_threads(1)
    settings = {"samples_per_dim": samples_per_dim, "epochs": epochs, "lr": LEARNING_RATE}
    store = FitStore.open(
        args.output_dir / STORE_NAME, settings, _machine(), resume=args.resume, tables_only=args.tables_only
    )
    started = time.perf_counter()
    results: dict[int, list[Result]] = {}
    finished: dict[int, int] = {}
    for dim in dims:
        for trial in range(trials):
            data = DataConfig(in_dim=dim, out_dim=dim, samples=samples_per_dim * dim, seed=trial)
            split = load_split(data)
            for method in methods:
                if method.name == "nll-tic" and args.tic_max_dim is not None and dim > args.tic_max_dim:
                    continue
                metrics = store.fit(
                    f"D={dim}/trial={trial}/{method.name}",
                    partial(
                        fit_and_score,
                        method,
                        split,
                        epochs=epochs,
                        lr=LEARNING_RATE,
                        seed=trial,
                        calibrate=False,
                        model=ModelConfig(),
                    ),
                )
                if metrics is None:
                    continue
                results.setdefault(dim, []).append(Result(method.name, trial, metrics))
                kl = metrics.get("kl_to_truth", float("nan"))
                seconds = metrics.get("seconds_per_epoch", float("nan"))
                print(f"D={dim} trial {trial} {method.name}: KL {kl:.4g}, {seconds:.3f} s/epoch", flush=True)
            finished[dim] = trial + 1
            progress = Progress(dims, trials, finished, time.perf_counter() - started, store.provenance())
            _write(args, results, names, epochs, samples_per_dim, progress)


def _machine() -> str:
    return describe_machine(("PyTorch", torch.__version__)) + " (CPU only, 1 torch thread)"


@dataclass(frozen=True)
class Progress:
    """How far a run got: trials finished per dimension, wall seconds, where its fits came from."""

    dims: tuple[int, ...]
    trials: int
    finished: dict[int, int]
    seconds: float
    provenance: str

    def unfinished(self) -> str:
        """``"."`` when every dimension has all its trials, else a clause naming what is missing."""
        missing = [
            f"D = {dim} ({self.finished.get(dim, 0)} of {self.trials} trials)"
            for dim in self.dims
            if self.finished.get(dim, 0) < self.trials
        ]
        return f"; not finished yet: {', '.join(missing)}." if missing else "."


def _write(
    args: argparse.Namespace,
    results: dict[int, list[Result]],
    names: list[str],
    epochs: int,
    samples_per_dim: int,
    progress: Progress,
) -> None:
    """Write the tables and plots of the trials finished so far (after every trial, so that an
    interrupted run keeps what it measured)."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    done = sorted(results)
    command = "python benchmarks/synthetic.py " + " ".join(sys.argv[1:])
    lines = [
        "# Synthetic multivariate: accuracy and cost against the target dimension",
        "",
        f"Command: `{command.strip()}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {_machine()}  ",
        f"Setup: D_in = D, {samples_per_dim}·D rows (80/10/10), {progress.trials} trial(s), at most {epochs} "
        f"epochs, lr {LEARNING_RATE:g}, batch 32, methods {', '.join(names)}; no variance calibration. "
        f"Wall time {progress.seconds:.0f} s{progress.unfinished()}  ",
        f"Fits: {progress.provenance}",
        "",
        "Mean ± standard deviation over trials; the best mean of each column is in bold. KL and W2² are to "
        "the true Gaussians of the generator. — : not run (`--tic-max-dim` skips nll-tic above that D).",
        "",
    ]
    for dim in done:
        lines += [
            f"## D = {dim}",
            "",
            *markdown_table(results[dim], names, ACCURACY_COLUMNS + COST_COLUMNS),
            "",
        ]
    lines += _ratios(results, names)
    write_report(args.output_dir / "synthetic.md", "\n".join(lines) + "\n")
    _plot(results, names, COST_COLUMNS, args.output_dir / "synthetic_cost.png")
    _plot(results, names, ACCURACY_COLUMNS[3:], args.output_dir / "synthetic_accuracy.png")
    print("\n".join(lines), flush=True)


def _ratio(numerator: float, denominator: float) -> str:
    ratio = numerator / denominator
    return "—" if np.isnan(ratio) else f"{ratio:.2f}"


def _ratios(results: dict[int, list[Result]], names: list[str]) -> list[str]:
    """Epoch-time ratios W2 bound ÷ MSE and NLL-TIC ÷ W2 bound per dimension (— where one did not run)."""
    lines = [
        "## Cost ratios (seconds per epoch)",
        "",
        "Means over the stored fits; with reused fits (see Fits above) the two sides of a ratio may come "
        "from different runs, under different loads.",
        "",
        "| D | W2 bound ÷ MSE | NLL-TIC ÷ W2 bound |",
        "|---:|---:|---:|",
    ]
    for dim, cell in sorted(results.items()):
        seconds = {name: mean_and_spread(cell, name, "seconds_per_epoch")[0] for name in names}
        bound = seconds.get("w2-bound", float("nan"))
        mse = seconds.get("mse", float("nan"))
        tic = seconds.get("nll-tic", float("nan"))
        lines.append(f"| {dim} | {_ratio(bound, mse)} | {_ratio(tic, bound)} |")
    return [*lines, ""]


if __name__ == "__main__":
    main()

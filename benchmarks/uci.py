"""UCI regression benchmark: every method under the paper's protocol and on a held-out split, plus NGBoost.

    python benchmarks/uci.py --data-dir ../shared/datasets/uci                  # 7 data sets, 3 trials
    python benchmarks/uci.py --data-dir ../shared/datasets/uci --quick          # 2 small sets, 1 epoch
    python benchmarks/uci.py --datasets energy,concrete --trials 2 --epochs 10 --methods w2-bound,nll

Two tables per run:

* ``--protocol tictac`` (the paper's: columns standardised ×10 and permuted, the first 25 % are inputs,
  metrics on the training rows), without variance calibration, next to the paper's reported MSE and NLL
  (``../shared/research/paper.md`` §5.3, transcribed below). A cell is marked ``≠`` where our mean differs
  from the paper's figure by more than our trial spread (two standard deviations, at least 5 %).
* ``--protocol holdout`` (80/10/10, metrics on the test rows), with covserve's default post-training
  variance calibration, and NGBoost's ``MultivariateNormal`` (``pip install -c constraints.txt ".[bench]"``)
  on the same splits with early stopping on the validation rows: the peer a user would pick instead.

Metrics: MSE, NLL (nats per row), TAC, calibration error and fit seconds, mean ± std over trials.
Writes ``uci.md`` to ``--output-dir``, with every fit's metrics in ``uci.json`` as it finishes; ``--resume``
reuses those (same settings only), so the seven data sets can be run in pieces.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import ngboost
import torch
from _arguments import positive_int
from _machine import describe_machine
from _methods import ALL_METHODS, Method, fit_and_score, parse_methods
from _report import write_report
from _store import FitStore, add_store_arguments

from covserve.training.compare import Result, markdown_table, mean_and_spread, method_label
from covserve.training.config import ModelConfig
from covserve.training.data import TICTAC_SCALE, DataConfig, Protocol, load_split
from covserve.training.methods import NGBOOST, NGBOOST_EARLY_STOPPING, fit_ngboost
from covserve.training.options import NGBOOST_ESTIMATORS

DATASETS = ("energy", "concrete", "wine_red", "abalone", "wine_white", "air_quality", "electrical")
"""Smallest first, so that a run cut short still covers the most data sets."""
QUICK_DATASETS = ("energy", "concrete")
DEFAULT_METHODS = ",".join(ALL_METHODS)
QUICK_METHODS = "w2-bound,nll"
FULL_TRIALS = 3
FULL_EPOCHS = 40
LEARNING_RATE = 1e-3
QUICK_NGBOOST_ESTIMATORS = 10
PEER_METHODS = ("w2-bound", "nll", "faithful")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
STORE_NAME = "uci.json"

PAPER_NAMES = {
    "nll": "NLL",
    "kl": "KL-Divergence",
    "beta-nll": "Beta-NLL",
    "diagonal": "NLL: Diagonal",
    "faithful": "Faithful",
    "nll-tic": "NLL: TIC",
    "w2-bound": "2-W (Bound)",
}
PAPER_COLUMNS = ("abalone", "air_quality", "concrete", "electrical", "energy", "wine_red", "wine_white")
PAPER_MSE = {
    "nll": (3.74, 17.92, 4.57, 9.28, 4.20, 8.94, 9.40),
    "kl": (1.90, 14.70, 3.84, 15.57, 4.20, 7.26, 8.17),
    "beta-nll": (0.35, 1.58, 2.02, 3.62, 1.87, 2.15, 3.43),
    "diagonal": (1.32, 8.90, 4.28, 6.58, 3.99, 5.75, 6.01),
    "faithful": (0.16, 0.33, 0.72, 0.89, 0.41, 0.70, 0.78),
    "nll-tic": (0.21, 0.82, 0.96, 0.91, 0.61, 0.97, 0.92),
    "w2-bound": (0.16, 0.34, 0.72, 0.90, 0.41, 0.71, 0.79),
}
"""ToSS UCI table (a), MSE, for the seven data sets we hold (paper columns Abalone, Air, Concrete,
Electrical, Energy, Red Wine, White Wine)."""
PAPER_NLL = {
    "nll": (35.89, 56.98, 28.50, 63.15, 29.85, 46.58, 58.06),
    "kl": (18.27, 83.18, 38.23, 73.87, 28.50, 61.96, 48.66),
    "beta-nll": (9.80, 29.38, 20.45, 35.44, 20.15, 34.05, 30.95),
    "diagonal": (18.61, 80.86, 46.82, 65.73, 36.09, 77.98, 67.21),
    "faithful": (11.86, 33.31, 17.42, 34.73, 19.41, 24.34, 26.01),
    "nll-tic": (4.71, 16.46, 11.36, 14.97, 12.06, 14.66, 12.33),
    "w2-bound": (6.32, 13.58, 8.96, 15.57, 8.85, 11.65, 12.12),
}
"""ToSS UCI table (b), NLL, same columns."""
SPREAD_FACTOR = 2.0
RELATIVE_FLOOR = 0.05
COLUMNS = (
    ("mse", "MSE"),
    ("nll", "NLL"),
    ("nll_uncalibrated", "NLL without calibration"),
    ("calibration_factor", "factor c"),
    ("tac", "TAC"),
    ("calibration_error", "calib. err."),
    ("fit_seconds", "fit s"),
)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets/uci"), help="UCI folder")
    parser.add_argument("--quick", action="store_true", help="two small sets, one trial and epoch")
    parser.add_argument("--datasets", default=None, help="comma-separated names (default: all seven)")
    parser.add_argument("--methods", default=None, help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--trials", type=positive_int, default=None, help=f"trials (default {FULL_TRIALS})")
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help=f"maximum epochs (default {FULL_EPOCHS})"
    )
    parser.add_argument(
        "--ngboost-estimators", type=positive_int, default=None, help="NGBoost boosting rounds"
    )
    add_store_arguments(parser, DEFAULT_OUTPUT, STORE_NAME)
    return parser.parse_args(argv)


def _run(
    dataset: str,
    methods: list[Method],
    protocol: Protocol,
    args: argparse.Namespace,
    store: FitStore,
    trials: int,
    epochs: int,
    estimators: int | None,
) -> list[Result]:
    """Every trial of ``methods`` (and NGBoost when ``estimators`` is given) on one data set."""
    results: list[Result] = []
    for trial in range(trials):
        data = DataConfig(data=f"uci:{dataset}", data_dir=args.data_dir, protocol=protocol, seed=trial)
        split = load_split(data)
        fits = {
            method.name: partial(
                fit_and_score,
                method,
                split,
                epochs=epochs,
                lr=LEARNING_RATE,
                seed=trial,
                calibrate=protocol is Protocol.HOLDOUT,
                model=ModelConfig(),
            )
            for method in methods
        }
        if estimators is not None:
            fits[NGBOOST] = partial(fit_ngboost, split, estimators, trial)
        for name, compute in fits.items():
            metrics = store.fit(f"{protocol.value}/{dataset}/trial={trial}/{name}", compute)
            if metrics is None:
                continue
            results.append(Result(name, trial, metrics))
            nll = metrics.get("nll", float("nan"))
            print(f"{protocol.value} {dataset} trial {trial} {name}: NLL {nll:.4g}", flush=True)
    return results


def _unit_variance(results: list[Result], method: str, key: str) -> tuple[float, float]:
    """Mean and spread of ``key`` rescaled from the protocol's std-10 targets to unit-variance targets.

    The paper's UCI figures match unit-variance targets (``paper.md`` §5.3, scale warning): MSE shrinks by
    ``10²`` and the NLL by ``D · ln 10`` (the log-determinant of the ×10 scaling, D targets)."""
    mean, spread = mean_and_spread(results, method, key)
    if key == "mse":
        return mean / TICTAC_SCALE**2, spread / TICTAC_SCALE**2
    targets, _ = mean_and_spread(results, method, "targets")
    return mean - targets * math.log(TICTAC_SCALE), spread


def _paper_cell(results: list[Result], method: str, key: str, dataset: str) -> str:
    table = PAPER_MSE if key == "mse" else PAPER_NLL
    ours, spread = _unit_variance(results, method, key)
    if method not in table or dataset not in PAPER_COLUMNS:
        return f"{ours:.4g} ± {spread:.2g} | —"
    paper = table[method][PAPER_COLUMNS.index(dataset)]
    tolerance = max(SPREAD_FACTOR * spread, RELATIVE_FLOOR * abs(paper))
    mark = " ≠" if abs(ours - paper) > tolerance else ""
    return f"{ours:.4g} ± {spread:.2g}{mark} | {paper:g}"


def _paper_table(results: dict[str, list[Result]], names: list[str]) -> list[str]:
    lines = [
        "| data set | method | MSE (ours) | MSE (paper) | NLL (ours) | NLL (paper) | TAC | calib. err. |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset, cell in results.items():
        for method in names:
            tac, tac_spread = mean_and_spread(cell, method, "tac")
            error, error_spread = mean_and_spread(cell, method, "calibration_error")
            lines.append(
                f"| {dataset} | {method_label(cell, method)} | {_paper_cell(cell, method, 'mse', dataset)} | "
                f"{_paper_cell(cell, method, 'nll', dataset)} | {tac:.4g} ± {tac_spread:.2g} | "
                f"{error:.3f} ± {error_spread:.2g} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Run both protocols (and NGBoost on the held-out one), then write ``uci.md``."""
    args = _arguments(argv)
    if not args.data_dir.is_dir():
        raise SystemExit(f"--data-dir: {args.data_dir} is not a folder holding the UCI csv files")
    datasets = args.datasets.split(",") if args.datasets else list(QUICK_DATASETS if args.quick else DATASETS)
    unknown = [name for name in datasets if name not in DATASETS]
    if unknown:
        raise SystemExit(f"--datasets: unknown {unknown}; choose from {', '.join(DATASETS)}")
    methods = parse_methods(args.methods or (QUICK_METHODS if args.quick else DEFAULT_METHODS))
    names = [m.name for m in methods]
    trials = args.trials or (1 if args.quick else FULL_TRIALS)
    epochs = args.epochs or (1 if args.quick else FULL_EPOCHS)
    estimators = args.ngboost_estimators or (QUICK_NGBOOST_ESTIMATORS if args.quick else NGBOOST_ESTIMATORS)
    torch.set_num_threads(1)
    settings = {"epochs": epochs, "ngboost_estimators": estimators, "lr": LEARNING_RATE}
    store = FitStore.open(
        args.output_dir / STORE_NAME, settings, _machine(), resume=args.resume, tables_only=args.tables_only
    )
    started = time.perf_counter()
    tictac: dict[str, list[Result]] = {}
    holdout: dict[str, list[Result]] = {}
    for dataset in datasets:
        tictac[dataset] = _run(dataset, methods, Protocol.TICTAC, args, store, trials, epochs, None)
        holdout[dataset] = _run(dataset, methods, Protocol.HOLDOUT, args, store, trials, epochs, estimators)
        pending = [name for name in datasets if name not in holdout]
        setup = Setup(trials, epochs, estimators, time.perf_counter() - started, pending, store.provenance())
        _write(args, names, tictac, holdout, setup)


def _machine() -> str:
    return (
        describe_machine(("PyTorch", torch.__version__), ("NGBoost", ngboost.__version__))
        + " (CPU only, 1 torch thread)"
    )


@dataclass(frozen=True)
class Setup:
    """What a report states about its run."""

    trials: int
    epochs: int
    estimators: int
    seconds: float
    pending: list[str]
    provenance: str


def _write(
    args: argparse.Namespace,
    names: list[str],
    tictac: dict[str, list[Result]],
    holdout: dict[str, list[Result]],
    setup: Setup,
) -> None:
    """Write ``uci.md`` for the data sets finished so far (after each one: an interrupted run keeps them)."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/uci.py " + " ".join(sys.argv[1:])
    lines = [
        "# UCI regression: the paper's protocol, a held-out split, and NGBoost",
        "",
        f"Command: `{command.strip()}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {_machine()}  ",
        f"Setup: {setup.trials} trial(s) (seed = trial for split, weights and batches), at most "
        f"{setup.epochs} epochs with early stopping on the validation NLL of the exported model (after the "
        f"calibration factor on the held-out split), lr {LEARNING_RATE:g}, batch 32, "
        "default networks; "
        f"NGBoost `MultivariateNormal`, at most {setup.estimators} rounds, early stopping after "
        f"{NGBOOST_EARLY_STOPPING}. Wall time {setup.seconds:.0f} s"
        + (f"; not run yet: {', '.join(setup.pending)}." if setup.pending else ".")
        + "  ",
        f"Fits: {setup.provenance}",
        "",
        "## Paper protocol (`--protocol tictac`, metrics on the training rows, no calibration)",
        "",
        "MSE and NLL are on the **unit-variance** scale, as the paper's figures are (they match "
        "unit-variance targets, not the protocol's std-10 ones; `../shared/research/paper.md` §5.3): "
        "ours are divided by 10² and lowered by D·ln 10. `≠`: our mean differs from the paper's figure by "
        "more than two trial standard deviations (and 5 %).",
        "",
        *_paper_table(tictac, names),
        "",
        "## Held-out split (`--protocol holdout`, test rows, variance calibration on the validation rows)",
        "",
    ]
    for dataset, cell in holdout.items():
        lines += [f"### {dataset}", "", *markdown_table(cell, [*names, "ngboost"], COLUMNS), ""]
    write_report(args.output_dir / "uci.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()

"""Where a method's W2² to the truth comes from, test row by test row (the synthetic benchmark's D = 20 case).

    python benchmarks/w2_rows.py                       # D = 20, trial 0: nll, kl, w2-bound, hybrid
    python benchmarks/w2_rows.py --quick               # D = 3, 1 epoch: a smoke test
    python benchmarks/w2_rows.py --dim 16 --trial 2 --methods nll,w2-bound

At D = 20 the likelihood losses' mean W2² to the true Gaussians is about 70× the W2 bound's while their KL
is the smaller (``results/README.md``). This script trains the methods on one trial of ``synthetic.py``'s
data with its settings (same split, initial weights and batches, so each fit is the stored one) and, per
row, splits W2² into the mean part ``‖μ − μ*‖²`` and the covariance part (the Bures term), with the row's
KL(truth ‖ prediction) and the ratios of the predicted to the true largest and smallest eigenvalue. The
table gives quantiles over the test rows and, separately, over the training rows; the shares of the summed
W2² and of the summed KL carried by the worst 1 % of rows (by W2²), and how far those rows' inputs sit from
the centre of the input box (in units of the median row's). KL(truth ‖ prediction) is the expected NLL less
the truth's entropy, so its share is how much of the likelihood losses' excess the worst rows make up: what
those losses can see of the rows that dominate W2².
Writes ``w2_rows.md`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _arguments import non_negative_int, positive_int
from _machine import describe_machine
from _methods import parse_methods, train_method
from _report import write_report
from synthetic import FULL_EPOCHS, LEARNING_RATE, QUICK_SAMPLES_PER_DIM, SAMPLES_PER_DIM

from covserve.training.config import ModelConfig
from covserve.training.data import DataConfig, load_split
from covserve.training.metrics import kl_to_truth, wasserstein_to_truth
from covserve.training.trainer import TrainingDivergedError, predict_raw

FULL_DIM = 20
QUICK_DIM = 3
DEFAULT_METHODS = "nll,kl,w2-bound,hybrid"
QUICK_METHODS = "nll,w2-bound"
WORST_SHARE = 0.01
"""The fraction of test rows, the largest W2² first, whose share of the summed W2² is reported."""
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "default-size"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="D = 3, 100·D rows, one epoch: a smoke test")
    parser.add_argument(
        "--dim", type=positive_int, default=None, help=f"target dimension (default {FULL_DIM})"
    )
    parser.add_argument(
        "--trial", type=non_negative_int, default=0, help="trial: data and weight seed (default 0)"
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help=f"maximum epochs (default {FULL_EPOCHS})"
    )
    parser.add_argument("--methods", default=None, help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT, help="where w2_rows.md goes")
    return parser.parse_args(argv)


RowMetric = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def _per_row(
    metric: RowMetric,
    true_mean: np.ndarray,
    true_covariance: np.ndarray,
    mean: np.ndarray,
    covariance: np.ndarray,
) -> np.ndarray:
    """``metric`` (a mean over rows, e.g. :func:`wasserstein_to_truth`) of each row alone, shape ``(N,)``."""
    return np.array(
        [
            metric(true_mean[i : i + 1], true_covariance[i : i + 1], mean[i : i + 1], covariance[i : i + 1])
            for i in range(len(mean))
        ]
    )


def _row_statistics(
    inputs: np.ndarray,
    true_mean: np.ndarray,
    true_covariance: np.ndarray,
    mean: np.ndarray,
    covariance: np.ndarray,
) -> dict[str, float]:
    """The table's cells for one method: W2² and KL quantiles over rows, the worst rows' share and inputs.

    Shapes: ``inputs (N, M)``, means ``(N, D)``, covariances ``(N, D, D)``, all in raw units."""
    w2 = _per_row(wasserstein_to_truth, true_mean, true_covariance, mean, covariance)
    w2_covariance = _per_row(wasserstein_to_truth, true_mean, true_covariance, true_mean, covariance)
    kl = _per_row(kl_to_truth, true_mean, true_covariance, mean, covariance)
    predicted = np.linalg.eigvalsh(covariance)
    true = np.linalg.eigvalsh(true_covariance)
    worst = np.argsort(w2)[::-1][: max(1, round(WORST_SHARE * len(w2)))]
    distance = np.linalg.norm(inputs - 0.5 * (inputs.min(axis=0) + inputs.max(axis=0)), axis=1)
    return {
        "w2_mean": float(np.mean(w2)),
        "w2_median": float(np.median(w2)),
        "w2_p99": float(np.quantile(w2, 0.99)),
        "w2_max": float(np.max(w2)),
        "worst_share": float(np.sum(w2[worst]) / np.sum(w2)),
        "worst_kl_share": float(np.sum(kl[worst]) / np.sum(kl)),
        "covariance_share": float(np.sum(w2_covariance) / np.sum(w2)),
        "kl_mean": float(np.mean(kl)),
        "kl_median": float(np.median(kl)),
        "largest_median": float(np.median(predicted[:, -1] / true[:, -1])),
        "largest_max": float(np.max(predicted[:, -1] / true[:, -1])),
        "smallest_median": float(np.median(predicted[:, 0] / true[:, 0])),
        "worst_distance": float(np.median(distance[worst]) / np.median(distance)),
    }


COLUMNS = (
    ("w2_mean", "W2² mean"),
    ("w2_median", "W2² median"),
    ("w2_p99", "W2² 99th pct"),
    ("w2_max", "W2² max"),
    ("worst_share", f"worst {WORST_SHARE:.0%} rows' share"),
    ("worst_kl_share", "their share of KL"),
    ("covariance_share", "covariance part's share"),
    ("kl_mean", "KL mean"),
    ("kl_median", "KL median"),
    ("largest_median", "λmax ratio median"),
    ("largest_max", "λmax ratio max"),
    ("smallest_median", "λmin ratio median"),
    ("worst_distance", "worst rows' ‖x − centre‖ ÷ median's"),
)


def main(argv: Sequence[str] | None = None) -> None:
    """Train each method on the trial's split, then write the per-row table."""
    args = _arguments(argv)
    dim = args.dim or (QUICK_DIM if args.quick else FULL_DIM)
    epochs = args.epochs or (1 if args.quick else FULL_EPOCHS)
    samples_per_dim = QUICK_SAMPLES_PER_DIM if args.quick else SAMPLES_PER_DIM
    methods = parse_methods(args.methods or (QUICK_METHODS if args.quick else DEFAULT_METHODS))
    torch.set_num_threads(1)
    split = load_split(DataConfig(in_dim=dim, out_dim=dim, samples=samples_per_dim * dim, seed=args.trial))
    parts = []
    for part_name, part in (("test", split.test), ("training", split.train)):
        if part.true_mean is None or part.true_covariance is None:
            raise SystemExit("the synthetic split carries no true Gaussians")
        parts.append((part_name, part.inputs, part.true_mean, part.true_covariance))
    rows = []
    for method in methods:
        try:
            result = train_method(
                method,
                split,
                epochs=epochs,
                lr=LEARNING_RATE,
                seed=args.trial,
                calibrate=False,
                model=ModelConfig(),
            )
        except TrainingDivergedError as error:
            rows.append(f"| {method.name} (diverged: {error}) | — |" + " — |" * len(COLUMNS))
            continue
        for part_name, inputs, true_mean, true_covariance in parts:
            mean, covariance = predict_raw(result.model, inputs, torch.device("cpu"))
            cells = _row_statistics(inputs, true_mean, true_covariance, mean, covariance)
            values = " | ".join(f"{cells[key]:.4g}" for key, _ in COLUMNS)
            rows.append(f"| {method.name} | {part_name} | {values} |")
            print(rows[-1], flush=True)
    machine = describe_machine(("PyTorch", torch.__version__)) + " (CPU only, 1 torch thread)"
    lines = [
        f"# Where W2² to the truth comes from, row by row: D = {dim}, trial {args.trial}",
        "",
        f"Command: `{' '.join(['python benchmarks/w2_rows.py', *sys.argv[1:]]).strip()}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {machine}  ",
        f"Setup: `synthetic.py`'s data and fits (D_in = D, {samples_per_dim}·D rows, 80/10/10, seed "
        f"{args.trial}; at most {epochs} epochs, lr {LEARNING_RATE:g}, batch 32, no variance calibration); "
        f"{len(split.test)} test rows, {len(split.train)} training rows.",
        "",
        "Each cell is over the rows named in the second column. W2² is the squared 2-Wasserstein distance "
        "to the true Gaussian (squared target units), KL is KL(truth ‖ prediction) in nats; the covariance "
        "part of W2² is the Bures term (W2² less ‖μ − μ*‖²). λ ratios: predicted ÷ true largest (smallest) "
        f"eigenvalue of the row's covariance. The worst rows are the {WORST_SHARE:.0%} with the largest W2²; "
        "their share of KL is of the summed KL over the same rows (KL is the expected NLL less the truth's "
        "entropy: the part of the likelihood losses' excess those rows make up); their distance is from the "
        "centre of the rows' inputs' bounding box.",
        "",
        "| method | rows | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
        *rows,
    ]
    write_report(args.output_dir / "w2_rows.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()

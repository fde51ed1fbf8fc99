"""The methods the evidence benchmarks compare, one training and scoring call each, and their tables.

Every method of the core registry plus the hybrid (the W2 bound with pseudo-labels for the first half of
the epochs, then NLL). A method that trains on pseudo-labels takes a label scheme after a ``+``
(``w2-bound+residuals``, ``hybrid+local-linear``); without one it uses ``targets``, the paper's
Algorithm 1. Within a trial all methods see the same split, the same batches and the same initial mean
network (``training.trainer`` seeds both from ``TrainConfig.seed``).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from covserve.training.config import Device, Hybrid, ModelConfig, TrainConfig
from covserve.training.data import Split
from covserve.training.losses import LossName
from covserve.training.pseudolabels import LabelScheme
from covserve.training.trainer import TrainingDivergedError, TrainingResult, score, train

__all__ = [
    "ALL_METHODS",
    "DIVERGED",
    "FAILED",
    "HYBRID",
    "UNRANKED",
    "Method",
    "Result",
    "fit_and_score",
    "markdown_table",
    "mean_and_spread",
    "method_label",
    "parse_methods",
    "train_method",
]

HYBRID = "hybrid"
DIVERGED = "diverged"
"""Metric key (1.0) of a fit whose training stopped with ``TrainingDivergedError`` (no other metrics)."""
FAILED = "failed"
"""Metric key (1.0) of a peer's fit that could not run on the data (no other metrics but ``fit_seconds``)."""
STOPPED = (DIVERGED, FAILED)
"""The keys of a fit that gave no metrics: counted in the label, left out of every average."""

BASE_METHODS: tuple[str, ...] = (
    "mse",
    "diagonal",
    "nll",
    "beta-nll",
    "faithful",
    "nll-tic",
    "kl",
    "w2",
    "w2-bound",
    HYBRID,
)
"""The methods without a label scheme (``targets`` labels where they use any)."""
LABELLED_METHODS: tuple[str, ...] = tuple(
    f"{base}+{scheme.value}"
    for base in ("w2-bound", HYBRID)
    for scheme in LabelScheme
    if scheme is not LabelScheme.TARGETS
)
"""The W2 bound and the hybrid with each label scheme beyond the paper's."""
ALL_METHODS: tuple[str, ...] = BASE_METHODS + LABELLED_METHODS


@dataclass(frozen=True)
class Method:
    """A row of the comparison: a registry loss or the hybrid, with an optional ``+scheme`` of labels."""

    name: str

    @property
    def base(self) -> str:
        """The loss or ``hybrid``, without the label scheme."""
        return self.name.partition("+")[0]

    @property
    def labels(self) -> LabelScheme:
        """The label scheme after the ``+`` (``targets`` without one)."""
        return LabelScheme(self.name.partition("+")[2] or LabelScheme.TARGETS)

    def train_config(self, epochs: int, lr: float, seed: int, calibrate: bool) -> TrainConfig:
        config = TrainConfig(
            epochs=epochs, lr=lr, seed=seed, device=Device.CPU, calibrate=calibrate, labels=self.labels
        )
        if self.base == HYBRID:  # at least one epoch of each phase
            total = max(epochs, 2)
            return config.model_copy(
                update={"method": Hybrid.HYBRID, "epochs": total, "hybrid_epochs": total // 2}
            )
        return config.model_copy(update={"method": LossName(self.base)})


@dataclass(frozen=True)
class Result:
    """Test metrics of one method in one trial, with its cost."""

    method: str
    trial: int
    metrics: dict[str, float]


def parse_methods(text: str) -> list[Method]:
    """Comma-separated names from :data:`ALL_METHODS` (``all`` for every one)."""
    names = list(ALL_METHODS) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(ALL_METHODS)}")
    return [Method(name) for name in names]


def train_method(
    method: Method, split: Split, *, epochs: int, lr: float, seed: int, calibrate: bool, model: ModelConfig
) -> TrainingResult:
    """Train ``method`` on ``split`` on the CPU (run files go to a temporary directory); raises
    ``TrainingDivergedError`` like :func:`training.trainer.train`."""
    config = method.train_config(epochs, lr, seed, calibrate)
    with tempfile.TemporaryDirectory(prefix="covserve-bench-") as scratch:
        return train(split, config, model, run_dir=Path(scratch), progress=False)


def fit_and_score(
    method: Method, split: Split, *, epochs: int, lr: float, seed: int, calibrate: bool, model: ModelConfig
) -> dict[str, float]:
    """Train ``method`` on ``split`` and return its test metrics plus ``seconds_per_epoch``,
    ``peak_memory_mib``, ``fit_seconds`` (training and scoring), the variance calibration factor and the
    test NLL without it (run files go to a temporary directory). A fit that diverges returns only
    :data:`DIVERGED` and ``fit_seconds``: the tables then average the other trials and say how many
    diverged (:func:`method_label`)."""
    started = time.perf_counter()
    try:
        result = train_method(
            method, split, epochs=epochs, lr=lr, seed=seed, calibrate=calibrate, model=model
        )
    except TrainingDivergedError as error:
        print(f"{method.name} diverged: {error}", flush=True)
        return {DIVERGED: 1.0, "fit_seconds": time.perf_counter() - started}
    device = torch.device("cpu")
    _, _, metrics = score(result.model, split.test, device)
    result.model.covariance_calibration.fill_(1.0)
    metrics["nll_uncalibrated"] = score(result.model, split.test, device)[2]["nll"]
    result.model.covariance_calibration.fill_(result.covariance_calibration)
    metrics["seconds_per_epoch"] = result.seconds_per_epoch
    metrics["peak_memory_mib"] = result.peak_memory_mib
    metrics["calibration_factor"] = result.covariance_calibration
    metrics["targets"] = float(split.test.targets.shape[1])
    metrics["fit_seconds"] = time.perf_counter() - started
    return metrics


def method_label(results: Iterable[Result], method: str) -> str:
    """``method``, followed by ``(k of n diverged)`` when ``k`` of its ``n`` trials diverged (and likewise
    ``failed``), and by ``n of m trials`` when it has fewer trials than the cell's most complete method."""
    results = list(results)
    trials = [r for r in results if r.method == method]
    counts = {word: sum(1 for r in trials if r.metrics.get(word)) for word in STOPPED}
    notes = [f"{count} of {len(trials)} {word}" for word, count in counts.items() if count]
    complete = max(Counter(r.method for r in results).values(), default=0)
    if len(trials) < complete:
        notes.append(f"{len(trials)} of {complete} trials")
    return f"{method} ({', '.join(notes)})" if notes else method


def mean_and_spread(results: Iterable[Result], method: str, key: str) -> tuple[float, float]:
    """Mean and standard deviation of ``key`` over the trials of ``method`` that did not diverge or fail
    (NaN when there are none): a stopped fit's ``fit_seconds`` is not a fit time."""
    values = [
        r.metrics[key]
        for r in results
        if r.method == method and key in r.metrics and not any(r.metrics.get(word) for word in STOPPED)
    ]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))


UNRANKED = frozenset({"calibration_factor"})
"""Columns where neither lower nor higher is better: never bold."""


def markdown_table(
    results: Sequence[Result], methods: Sequence[str], columns: Sequence[tuple[str, str]]
) -> list[str]:
    """Rows ``method | mean ± std ...`` for each ``(key, heading)`` column, the lowest mean in bold
    (lower is better in every column except :data:`UNRANKED`)."""
    lines = [
        "| method | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    best = {
        key: min((mean_and_spread(results, m, key)[0] for m in methods), key=lambda v: (np.isnan(v), v))
        for key, _ in columns
    }
    for method in methods:
        cells = []
        for key, _ in columns:
            mean, spread = mean_and_spread(results, method, key)
            text = "—" if np.isnan(mean) else f"{mean:.4g} ± {spread:.2g}"
            bold = mean == best[key] and not np.isnan(mean) and key not in UNRANKED
            cells.append(f"**{text}**" if bold else text)
        lines.append(f"| {method_label(results, method)} | " + " | ".join(cells) + " |")
    return lines

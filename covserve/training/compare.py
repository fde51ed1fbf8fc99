"""``covserve-train compare``: every method on identical splits and initial weights, mean ± std."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covserve.training.config import Hybrid, RunConfig
from covserve.training.data import load_split
from covserve.training.losses import LossName
from covserve.training.runs import RunDirectory
from covserve.training.trainer import resolve_device, score, train

__all__ = ["COLUMNS", "Comparison", "run_comparison"]

COLUMNS: tuple[tuple[str, str], ...] = (
    ("mse", "MSE"),
    ("nll", "NLL"),
    ("tac", "TAC"),
    ("calibration_error", "calib. err."),
    ("kl_to_truth", "KL to truth"),
    ("w2_to_truth", "W2² to truth"),
    ("seconds_per_epoch", "s / epoch"),
    ("peak_memory_mib", "peak MiB"),
)
"""Metric key and table heading, in table order; truth columns appear only for synthetic data."""


@dataclass(frozen=True)
class Comparison:
    """Per method, per metric, the values of every trial."""

    trials: int
    results: dict[str, dict[str, list[float]]]

    def table(self) -> str:
        """A Markdown table of mean ± std over trials."""
        present = [(key, title) for key, title in COLUMNS if any(key in r for r in self.results.values())]
        lines = [
            "| method | " + " | ".join(title for _, title in present) + " |",
            "|---|" + "---:|" * len(present),
        ]
        for method, metrics in self.results.items():
            cells = []
            for key, _ in present:
                values = np.asarray(metrics.get(key, [np.nan]))
                cells.append(f"{values.mean():.4g} ± {values.std():.2g}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def run_comparison(
    config: RunConfig,
    methods: Sequence[LossName | Hybrid],
    trials: int,
    run: RunDirectory,
    *,
    progress: bool,
) -> Comparison:
    """Train every method ``trials`` times; trial ``t`` uses data and weight seed ``seed + t`` for all.

    Within a trial every method sees the same split, the same batches in the same order and the same
    initial mean network (the covariance networks agree wherever their output sizes do). Writes
    ``compare.md`` and ``compare.json`` into ``run``.
    """
    device = resolve_device(config.train.device)
    results: dict[str, dict[str, list[float]]] = {method.value: {} for method in methods}
    for trial in range(trials):
        data = config.data.model_copy(update={"seed": config.data.seed + trial})
        split = load_split(data)
        for method in methods:
            train_config = config.train.model_copy(
                update={"method": method, "seed": config.train.seed + trial}
            )
            result = train(
                split,
                train_config,
                config.model,
                run_dir=run.path / f"{method.value}-trial{trial}",
                progress=progress,
            )
            _, _, metrics = score(result.model, split.test, device)
            metrics["seconds_per_epoch"] = result.seconds_per_epoch
            metrics["peak_memory_mib"] = result.peak_memory_mib
            for key, value in metrics.items():
                results[method.value].setdefault(key, []).append(float(value))
    comparison = Comparison(trials, results)
    (run.path / "compare.md").write_text(comparison.table(), encoding="utf-8")
    (run.path / "compare.json").write_text(
        json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return comparison

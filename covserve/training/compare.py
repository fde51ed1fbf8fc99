"""``covserve-train compare``: methods side by side on identical splits and initial weights, in the tables
the benchmarks write (mean ± std over trials, the best mean in bold, stopped fits counted in the label)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from covserve.training.config import RunConfig
from covserve.training.data import load_split
from covserve.training.methods import NGBOOST, STOPPED, Method, fit_and_score
from covserve.training.options import NGBOOST_ESTIMATORS
from covserve.training.runs import RunDirectory

__all__ = [
    "BENCHMARK_SETTINGS",
    "COLUMNS",
    "UNRANKED",
    "Comparison",
    "Result",
    "describe_settings",
    "markdown_table",
    "mean_and_spread",
    "method_label",
    "run_comparison",
]

COLUMNS: tuple[tuple[str, str], ...] = (
    ("mse", "MSE"),
    ("nll", "NLL"),
    ("nll_uncalibrated", "NLL without calibration"),
    ("calibration_factor", "factor c"),
    ("tac", "TAC"),
    ("calibration_error", "calib. err."),
    ("kl_to_truth", "KL to truth"),
    ("w2_to_truth", "W2² to truth"),
    ("fit_seconds", "fit s"),
    ("seconds_per_epoch", "s / epoch"),
)
"""Metric key and table heading, in table order; a column appears only when some method has it (the truth
columns only for synthetic data, the calibration columns only for covserve's own methods)."""
BENCHMARK_SETTINGS = (
    "the benchmarks train at lr 0.001 for 40 epochs (UCI) or 20 (synthetic), names without +scheme on "
    "targets labels, calibration off under the tictac protocol: --lr 1e-3 --epochs 40 --labels targets "
    "gives their settings"
)
"""How ``benchmarks/uci.py`` and ``benchmarks/synthetic.py`` differ from ``covserve-train``'s defaults."""


@dataclass(frozen=True)
class Result:
    """Test metrics of one method in one trial, with its cost."""

    method: str
    trial: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Comparison:
    """Every fit's metrics, and the methods in the order they were asked for."""

    methods: tuple[str, ...]
    results: tuple[Result, ...]

    def table(self) -> str:
        """The Markdown table: mean ± std over trials, the lowest mean of a column in bold."""
        present = [
            (key, title) for key, title in COLUMNS if any(key in result.metrics for result in self.results)
        ]
        return "\n".join(markdown_table(self.results, self.methods, present)) + "\n"


def describe_settings(config: RunConfig, trials: int) -> str:
    """One paragraph: the settings every method of a comparison shares, and how the benchmarks' differ."""
    train = config.train
    hybrid = f"{train.hybrid_epochs}" if train.hybrid_epochs else "half of the epochs"
    return (
        f"{trials} trials on {config.data.data} (data seed {config.data.seed} + trial, weight seed "
        f"{train.seed} + trial); every method: at most {train.epochs} epochs (early stopping after "
        f"{train.patience}), lr {train.lr:g}, batch {train.batch_size}, calibration "
        f"{'on' if train.calibrate else 'off'}, {train.labels.value} labels for names without +scheme, the "
        f"hybrid's first phase {hybrid}. Note: {BENCHMARK_SETTINGS}."
    )


def run_comparison(
    config: RunConfig,
    methods: Sequence[Method],
    trials: int,
    run: RunDirectory,
    *,
    ngboost_estimators: int = NGBOOST_ESTIMATORS,
    progress: bool = False,
) -> Comparison:
    """Fit every method ``trials`` times; trial ``t`` uses data seed ``data.seed + t`` and weight seed
    ``train.seed + t`` for all of them.

    Every method starts from ``config.train`` (its epochs, learning rate, calibration, label scheme for
    names without ``+scheme``); ``--hybrid-epochs`` applies to the ``hybrid`` rows only. Within a trial
    every method sees the same split, the same batches in the same order and the same initial mean network.
    Writes ``compare.md`` and ``compare.json`` (every fit's metrics) into ``run``; each fit's run files go
    to ``<run>/<method>-trial<t>/``; progress bars when ``progress``.
    """
    results: list[Result] = []
    for trial in range(trials):
        split = load_split(config.data.model_copy(update={"seed": config.data.seed + trial}))
        base = config.train.model_copy(update={"seed": config.train.seed + trial})
        for method in methods:
            metrics = fit_and_score(
                method,
                split,
                base,
                config.model,
                run_dir=None if method.base == NGBOOST else run.path / f"{method.name}-trial{trial}",
                ngboost_estimators=ngboost_estimators,
                progress=progress,
            )
            results.append(Result(method.name, trial, metrics))
            nll = metrics.get("nll", float("nan"))
            print(f"trial {trial} {method.name}: test NLL {nll:.4g}", flush=True)
    comparison = Comparison(tuple(method.name for method in methods), tuple(results))
    settings = describe_settings(config, trials)
    (run.path / "compare.md").write_text(f"{settings}\n\n{comparison.table()}", encoding="utf-8")
    by_fit = [{"method": r.method, "trial": r.trial, "metrics": r.metrics} for r in results]
    (run.path / "compare.json").write_text(json.dumps(by_fit, indent=2) + "\n", encoding="utf-8")
    return comparison


UNRANKED = frozenset({"calibration_factor"})
"""Columns where neither lower nor higher is better: never bold."""


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

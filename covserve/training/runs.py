"""Run directories: ``runs/<name>-<timestamp>/`` with config, per-epoch metrics, report and plots."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from covserve.training import plots
from covserve.training.atomic import write_atomically
from covserve.training.config import RunConfig
from covserve.training.data import Table
from covserve.training.metrics import calibration

__all__ = ["REPORT_FILE", "RunDirectory", "create_run_directory"]

REPORT_FILE = "report.json"


def _write_atomic(path: Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


class RunDirectory:
    """One run's folder; every file is written atomically except the append-only ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: RunConfig) -> None:
        """``config.yaml``: the fully resolved configuration (file + flags + defaults)."""
        _write_atomic(
            self.path / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        )

    def append_epoch(self, record: dict[str, float]) -> None:
        """One line of ``metrics.jsonl`` per epoch."""
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def write_report(self, report: dict[str, Any]) -> Path:
        """``report.json``: final test metrics, timings and provenance (written last: a run with a report
        is finished)."""
        path = self.path / REPORT_FILE
        _write_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
        return path

    def read_report(self) -> dict[str, Any] | None:
        """The finished run's ``report.json``, or ``None`` while the run is unfinished."""
        path = self.path / REPORT_FILE
        if not path.is_file():
            return None
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return report

    def write_plots(
        self,
        history: list[dict[str, float]],
        table: Table,
        mean: np.ndarray,
        covariance: np.ndarray,
        *,
        kept_epoch: int,
        split_name: str = "test",
    ) -> list[Path]:
        """Learning curves (the kept epoch marked), then on ``table`` (the ``split_name`` split):
        predicted-vs-true, χ² calibration, and covariance ellipses for 2 targets or a correlation heatmap
        for more."""
        std = np.sqrt(np.diagonal(covariance, axis1=-2, axis2=-1))
        result = calibration(mean, covariance, table.targets)
        shown = f"{split_name} split, {len(table)} rows"
        written = [
            plots.learning_curves(
                history,
                self.path / "learning_curves.png",
                kept_epoch=kept_epoch,
                title=f"Learning curves: training loss, validation split metrics (kept epoch {kept_epoch})",
            ),
            plots.predicted_vs_true(
                mean,
                table.targets,
                std,
                table.target_names,
                self.path / "predicted_vs_true.png",
                title=f"Predicted vs true ({shown})",
            ),
            plots.calibration_curve(
                result.levels,
                result.coverage,
                self.path / "calibration.png",
                title=f"χ² calibration ({shown})",
            ),
        ]
        if table.targets.shape[1] == 2:
            written.append(
                plots.covariance_ellipses(
                    table.targets,
                    mean,
                    covariance,
                    self.path / "covariance_ellipses.png",
                    true_mean=table.true_mean,
                    true_covariance=table.true_covariance,
                    target_names=table.target_names,
                    title=f"Covariance ({shown})",
                )
            )
        elif table.targets.shape[1] > 2:
            written.append(
                plots.correlation_heatmap(
                    covariance,
                    table.target_names,
                    self.path / "correlations.png",
                    true_covariance=table.true_covariance,
                    title=f"Correlations between targets ({shown})",
                )
            )
        return written


def create_run_directory(parent: Path, name: str) -> RunDirectory:
    """A new ``parent/<name>-<UTC timestamp>`` (suffixed if it exists already)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate = parent / f"{name}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = parent / f"{name}-{stamp}-{suffix}"
    return RunDirectory(candidate)

"""Training orchestration: data → run folder → trainer → test scores → model repository → report.

The CLI (:mod:`covserve.training.cli`) parses flags and prints; everything a run *does* is here, so a
notebook or another front end drives the same steps. Data and the device are checked before a run folder
exists, so a usage or data error never leaves an orphan ``runs/<name>-<time>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covserve import __version__
from covserve.training.compare import Comparison, run_comparison
from covserve.training.config import RunConfig, load_config
from covserve.training.data import Split, load_split
from covserve.training.distributed import SINGLE, Ranks
from covserve.training.errors import UsageError
from covserve.training.export import ModelCard, check_interface_unchanged, export_model
from covserve.training.methods import Method
from covserve.training.neighbour_search import NeighbourIndex, SearchReport, faiss_available
from covserve.training.networks import CovarianceModel
from covserve.training.options import NGBOOST_ESTIMATORS
from covserve.training.runs import RunDirectory, create_run_directory
from covserve.training.trainer import (
    MAX_EPOCHS,
    build_model,
    load_checkpoint,
    resolve_device,
    score,
    train,
    uses_pseudo_labels,
)

__all__ = [
    "VERIFICATION_ROWS",
    "FitOutcome",
    "check_fit_split",
    "check_publishable",
    "compare",
    "fit",
    "model_card",
    "publish",
    "publish_card",
    "republish",
    "start_run",
]

VERIFICATION_ROWS = 256
"""Test rows on which ONNX Runtime must reproduce torch before a version is published."""


@dataclass(frozen=True)
class FitOutcome:
    """What :func:`fit` produced: test ``metrics``, the published ``version`` directory (``None`` for a
    ``tic`` model, which has no ONNX form) and the path of ``report.json``."""

    metrics: dict[str, float]
    version: Path | None
    report_path: Path
    epochs_run: int
    max_epochs: int
    best_epoch: int
    stopped: str
    """Why training ended: ``"max epochs"`` or the early-stopping reason."""
    covariance_calibration: float

    def training_summary(self) -> str:
        """Two lines: how training ended, and which epoch was kept with its calibration factor."""
        if self.stopped == MAX_EPOCHS:
            ended = f"training ran all {self.max_epochs} epochs"
        else:
            ended = f"training stopped early at epoch {self.epochs_run} of {self.max_epochs} ({self.stopped})"
        return (
            f"{ended}\nkept epoch {self.best_epoch}, the best on the validation rows; covariance calibration "
            f"factor {self.covariance_calibration:.4g} (every exported covariance is multiplied by it)"
        )


def check_fit_split(config: RunConfig, split: Split) -> None:
    """Refuse a ``fit`` whose ``--device`` is unusable here, whose ``--neighbour-index`` is not installed,
    or whose split has no test rows (the test rows score the model and verify its export)."""
    resolve_device(config.train.device)
    wants_faiss = config.train.neighbour_index is NeighbourIndex.FAISS
    if wants_faiss and uses_pseudo_labels(config.train) and not faiss_available():
        raise UsageError(
            "--neighbour-index faiss: faiss-cpu is not installed (pip install 'covserve[train]')"
        )
    if len(split.test) == 0:
        raise UsageError(
            "--test-fraction must be > 0: fit reports test metrics and verifies the export on them"
        )


def check_publishable(config: RunConfig, split: Split) -> None:
    """Refuse, before any training, a run whose model could not be published: its inputs or targets differ
    from the latest version of ``config.name`` and ``--allow-schema-change`` is not given."""
    if not config.allow_schema_change:
        check_interface_unchanged(
            config.repository, config.name, split.train.input_names, split.train.target_names
        )


def start_run(config: RunConfig, suffix: str = "") -> RunDirectory:
    """A new run folder ``<run_dir>/<name><suffix>-<time>/`` holding ``config.yaml``."""
    run = create_run_directory(config.run_dir, f"{config.name}{suffix}")
    run.write_config(config)
    return run


def model_card(
    config: RunConfig,
    split: Split,
    test_metrics: dict[str, float],
    neighbour_search: dict[str, Any] | None = None,
) -> ModelCard:
    """The ``model.json`` contents a run knows: names, method, labels and their neighbour search, data and
    training-input statistics."""
    return ModelCard(
        name=config.name,
        method=config.train.method.value,
        input_names=split.train.input_names,
        target_names=split.train.target_names,
        data_description=split.description,
        split_sizes=split.sizes(),
        test_metrics=test_metrics,
        training_input_mean=split.train.inputs.mean(axis=0),
        training_input_covariance=np.atleast_2d(np.cov(split.train.inputs, rowvar=False)),
        labels=config.train.labels.value if uses_pseudo_labels(config.train) else None,
        hybrid_epochs=config.train.bound_epochs,
        neighbour_search=neighbour_search,
    )


def publish(
    model: CovarianceModel,
    config: RunConfig,
    split: Split,
    metrics: dict[str, float],
    neighbour_search: dict[str, Any] | None = None,
) -> Path | None:
    """Export ``model`` as the next version of ``config.name``; ``None`` for a ``tic`` model.
    ``neighbour_search`` (:meth:`SearchReport.as_dict`) is recorded in ``model.json``."""
    if model.kind.value == "tic":
        return None
    card = model_card(config, split, metrics, neighbour_search)
    verification = split.test.inputs[:VERIFICATION_ROWS]
    return publish_card(model, card, config.repository, verification, config.allow_schema_change)


def publish_card(
    model: CovarianceModel,
    card: ModelCard,
    repository: Path,
    verification: np.ndarray,
    allow_schema_change: bool,
) -> Path:
    """Export ``model`` with ``card`` as the next version of ``card.name`` in ``repository``, verified on
    the raw-unit ``verification`` inputs ``(N, M)``; refused (:class:`UsageError`) when its inputs or targets
    differ from the latest version's, unless ``allow_schema_change``."""
    if not allow_schema_change:
        check_interface_unchanged(repository, card.name, card.input_names, card.target_names)
    return export_model(model.cpu(), card, repository, verification)


def fit(
    config: RunConfig,
    split: Split,
    run: RunDirectory,
    *,
    resume: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_search: Callable[[SearchReport], None] | None = None,
    ranks: Ranks = SINGLE,
) -> FitOutcome | None:
    """Train (or continue ``resume``), score the test split, plot, publish and write ``report.json``.

    ``on_epoch`` sees every epoch's record after it is appended to the run's ``metrics.jsonl``;
    ``on_search`` how the pseudo-labels' neighbours were found. Over several ``ranks`` every rank trains
    and only rank 0 writes, scores, publishes and returns the outcome (the others return ``None``).
    """

    def record_epoch(record: dict[str, float]) -> None:
        if ranks.main:
            run.append_epoch(record)
            if on_epoch is not None:
                on_epoch(record)

    result = train(
        split,
        config.train,
        config.model,
        run_dir=run.path,
        resume=resume,
        progress=progress,
        on_epoch=record_epoch,
        on_search=on_search if ranks.main else None,
        ranks=ranks,
    )
    if not ranks.main:
        return None
    search = None if result.neighbour_search is None else result.neighbour_search.as_dict()
    mean, covariance, metrics = score(result.model, split.test, torch.device(result.device))
    run.write_plots(result.history, split.test, mean, covariance, kept_epoch=result.best_epoch)
    version = publish(result.model, config, split, metrics, search)
    report: dict[str, Any] = {
        "test_metrics": metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped": result.stopped,
        "seconds_per_epoch": result.seconds_per_epoch,
        "covariance_calibration": result.covariance_calibration,
        "process_peak_rss_mib": result.process_peak_rss_mib,
        "training_memory_growth_mib": result.peak_memory_mib,
        "device": result.device,
        "neighbour_search": search,
        "data": {"description": split.description, "split_sizes": split.sizes()},
        "published": str(version) if version is not None else None,
        "covserve_version": __version__,
    }
    return FitOutcome(
        metrics=metrics,
        version=version,
        report_path=run.write_report(report),
        epochs_run=len(result.history),
        max_epochs=config.train.epochs,
        best_epoch=result.best_epoch,
        stopped=result.stopped,
        covariance_calibration=result.covariance_calibration,
    )


def compare(
    config: RunConfig,
    methods: list[Method],
    trials: int,
    *,
    progress: bool = True,
    ngboost_estimators: int = NGBOOST_ESTIMATORS,
) -> tuple[RunDirectory, Comparison]:
    """Train every method ``trials`` times on identical splits and initial weights, in a new run folder
    (created only once the data and the device are known to be usable)."""
    if trials < 1:
        raise UsageError(f"--trials must be >= 1, got {trials}")
    resolve_device(config.train.device)
    load_split(config.data)
    run = start_run(config, "-compare")
    return run, run_comparison(
        config, methods, trials, run, progress=progress, ngboost_estimators=ngboost_estimators
    )


def republish(checkpoint_path: Path, name: str | None, repository: Path | None) -> Path | None:
    """Export a run's best checkpoint again (to another ``name`` or ``repository`` if given)."""
    checkpoint = load_checkpoint(checkpoint_path)
    run_path = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent
    config = load_config(run_path / "config.yaml", {"run": {"name": name, "repository": repository}})
    split = load_split(config.data)
    model = build_model(split, config.train, config.model)
    model.load_state_dict(checkpoint["best_model"])
    _, _, metrics = score(model, split.test, torch.device("cpu"))
    finished = RunDirectory(run_path).read_report() or {}
    return publish(model, config, split, metrics, finished.get("neighbour_search"))

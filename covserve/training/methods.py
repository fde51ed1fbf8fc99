"""The methods ``covserve-train compare`` and the benchmarks put side by side, one fit-and-score call each.

A method is a loss of the registry, ``hybrid`` (the W2 bound on pseudo-labels for the first phase, then
NLL on the same head), either of them with a label scheme after a ``+`` (``w2-bound+residuals``,
``hybrid+local-linear``), or ``ngboost`` (NGBoost's ``MultivariateNormal``, when the ``bench`` extra is
installed). A name without a scheme uses the base configuration's ``labels``. Within a trial every method
sees the same split, the same batches and the same initial mean network (``trainer`` seeds both from
``TrainConfig.seed``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from covserve.training.config import Hybrid, ModelConfig, TrainConfig
from covserve.training.data import Split
from covserve.training.losses import LossName, get_loss
from covserve.training.metrics import compute_metrics
from covserve.training.options import NGBOOST_ESTIMATORS
from covserve.training.pseudolabels import LabelScheme
from covserve.training.trainer import TrainingDivergedError, TrainingResult, score, train

__all__ = [
    "ALL_METHODS",
    "BASE_METHODS",
    "DIVERGED",
    "FAILED",
    "HYBRID",
    "LABELLED_METHODS",
    "NGBOOST",
    "NGBOOST_EARLY_STOPPING",
    "STOPPED",
    "Method",
    "fit_and_score",
    "fit_ngboost",
    "ngboost_installed",
    "parse_methods",
    "score_peer",
    "train_method",
]

HYBRID = "hybrid"
NGBOOST = "ngboost"
"""The peer: NGBoost's ``MultivariateNormal`` on the raw-unit split (``pip install 'covserve[bench]'``)."""
NGBOOST_EARLY_STOPPING = 20
"""Boosting rounds without a better validation score before NGBoost stops."""
DIVERGED = "diverged"
"""Metric key (1.0) of a fit whose training stopped with ``TrainingDivergedError`` (no other metrics)."""
FAILED = "failed"
"""Metric key (1.0) of a peer's fit that could not run on the data (no other metrics but ``fit_seconds``)."""
STOPPED = (DIVERGED, FAILED)
"""The keys of a fit that gave no metrics: counted in a table's label, left out of every average."""

BASE_METHODS: tuple[str, ...] = (*(loss.value for loss in LossName), HYBRID)
"""Every registry loss and the hybrid, without a label scheme."""
LABELLED_METHODS: tuple[str, ...] = tuple(
    f"{base}+{scheme.value}"
    for base in (*(loss.value for loss in LossName if get_loss(loss).needs_pseudo_labels), HYBRID)
    for scheme in LabelScheme
)
"""Every method that trains on pseudo-labels, with each label scheme."""
ALL_METHODS: tuple[str, ...] = (*BASE_METHODS, *LABELLED_METHODS, NGBOOST)
"""Every name :func:`parse_methods` accepts."""


@dataclass(frozen=True)
class Method:
    """A row of a comparison: a registry loss, the hybrid or NGBoost, with an optional ``+scheme``."""

    name: str

    @property
    def base(self) -> str:
        """The loss, ``hybrid`` or ``ngboost``, without the label scheme."""
        return self.name.partition("+")[0]

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this method, its label scheme, and the hybrid's phases: ``base.hybrid_epochs``
        (or half of the epochs) for ``hybrid`` and at least one epoch of each phase, none for the others."""
        scheme = self.name.partition("+")[2]
        update: dict[str, object] = {"labels": LabelScheme(scheme) if scheme else base.labels}
        if self.base == HYBRID:
            epochs = max(base.epochs, 2)
            first = base.hybrid_epochs if base.hybrid_epochs and base.hybrid_epochs < epochs else epochs // 2
            update |= {"method": Hybrid.HYBRID, "epochs": epochs, "hybrid_epochs": first}
        else:
            update |= {"method": LossName(self.base), "hybrid_epochs": 0}
        return base.model_copy(update=update)


def parse_methods(text: str) -> list[Method]:
    """Comma-separated names from :data:`ALL_METHODS` (``all`` for every one); ``ValueError`` naming the
    unknown ones, or ``ngboost`` when NGBoost is not installed."""
    names = list(ALL_METHODS) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no method given; choose from {', '.join(ALL_METHODS)}")
    unknown = [name for name in names if name not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown {unknown}; choose from {', '.join(ALL_METHODS)}")
    if NGBOOST in names and not ngboost_installed():
        raise ValueError("ngboost is not installed here; pip install 'covserve[bench]' or leave it out")
    return [Method(name) for name in names]


def ngboost_installed() -> bool:
    """Whether the optional peer NGBoost can be imported."""
    return find_spec(NGBOOST) is not None


def train_method(
    method: Method,
    split: Split,
    base: TrainConfig,
    model: ModelConfig,
    run_dir: Path | None = None,
    *,
    progress: bool = False,
) -> TrainingResult:
    """Train ``method`` on ``split`` (run files in ``run_dir``, or a temporary directory; progress bars
    when ``progress``); raises ``TrainingDivergedError`` like :func:`covserve.training.trainer.train`."""
    config = method.train_config(base)
    if run_dir is not None:
        return train(split, config, model, run_dir=run_dir, progress=progress)
    with tempfile.TemporaryDirectory(prefix="covserve-method-") as scratch:
        return train(split, config, model, run_dir=Path(scratch), progress=progress)


def fit_and_score(
    method: Method,
    split: Split,
    base: TrainConfig,
    model: ModelConfig,
    *,
    run_dir: Path | None = None,
    ngboost_estimators: int = NGBOOST_ESTIMATORS,
    progress: bool = False,
) -> dict[str, float]:
    """Fit ``method`` on ``split`` and return its test metrics plus ``fit_seconds`` (training and
    scoring) and, for covserve's own methods, ``seconds_per_epoch``, ``peak_memory_mib``,
    ``calibration_factor`` and ``nll_uncalibrated`` (the test NLL without the factor).

    A fit that diverges returns only :data:`DIVERGED` and ``fit_seconds``, an NGBoost fit that cannot run
    on the data only :data:`FAILED` and ``fit_seconds``: a table then averages the other trials and says
    how many stopped. NGBoost uses ``ngboost_estimators`` boosting rounds and ``base.seed``.
    """
    if method.base == NGBOOST:
        return fit_ngboost(split, ngboost_estimators, base.seed)
    started = time.perf_counter()
    try:
        result = train_method(method, split, base, model, run_dir, progress=progress)
    except TrainingDivergedError as error:
        print(f"{method.name} diverged: {error}", flush=True)
        return {DIVERGED: 1.0, "fit_seconds": time.perf_counter() - started}
    device = torch.device("cpu")
    result.model.to(device)
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


def fit_ngboost(split: Split, estimators: int, seed: int) -> dict[str, float]:
    """NGBoost ``MultivariateNormal`` on the raw-unit split, early-stopped on the validation rows; its test
    metrics with ``fit_seconds``.

    Its starting point inverts the training targets' covariance, so linearly dependent targets (UCI
    electrical's ``p1 = −(p2 + p3 + p4)``) can stop it, or let it predict covariances that are not
    symmetric positive definite: either fit is recorded as :data:`FAILED` (:func:`score_peer`).
    """
    from ngboost import NGBRegressor
    from ngboost.distns import MultivariateNormal

    started = time.perf_counter()
    model = NGBRegressor(
        Dist=MultivariateNormal(split.train.targets.shape[1]),
        n_estimators=estimators,
        verbose=False,
        random_state=seed,
    )
    try:
        model.fit(
            split.train.inputs,
            split.train.targets,
            X_val=split.validation.inputs,
            Y_val=split.validation.targets,
            early_stopping_rounds=NGBOOST_EARLY_STOPPING,
        )
    except np.linalg.LinAlgError as error:
        print(f"ngboost failed: {error} (its start needs an invertible target covariance)", flush=True)
        return {FAILED: 1.0, "fit_seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    distribution = model.pred_dist(split.test.inputs)
    return score_peer(
        np.asarray(distribution.loc, dtype=np.float64),
        np.asarray(distribution.cov, dtype=np.float64),
        split.test.targets,
        seconds,
    )


def score_peer(
    mean: np.ndarray, covariance: np.ndarray, targets: np.ndarray, seconds: float
) -> dict[str, float]:
    """The test metrics of a peer's prediction (mean ``(N, D)``, covariance ``(N, D, D)``, raw units) with
    ``fit_seconds``, or :data:`FAILED` when a covariance is not a valid one (not symmetric, not positive
    definite, not finite): covserve's metrics refuse to score it, and the peer gets no number."""
    try:
        metrics = compute_metrics(mean, covariance, targets)
    except ValueError as error:
        print(f"ngboost failed: its prediction is not a valid Gaussian: {error}", flush=True)
        return {FAILED: 1.0, "fit_seconds": seconds}
    metrics["fit_seconds"] = seconds
    return metrics

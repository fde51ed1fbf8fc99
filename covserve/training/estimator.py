"""``CovarianceRegressor``: covserve's training as a scikit-learn estimator.

Three lines in a notebook train, score and publish what ``covserve-train fit`` would::

    model = CovarianceRegressor(epochs=40).fit(X, Y)       # numpy arrays or pandas DataFrames
    model.score(X_test, Y_test)                            # mean log-likelihood per row, nats
    model.export("models", "plant")                        # models/plant/<version>/, ready to serve

The constructor's parameters are the trainer's options (:class:`~covserve.training.config.TrainConfig`
and :class:`~covserve.training.config.ModelConfig`) with the same defaults, checked when ``fit`` runs (a
bad value is a ``ValueError`` naming it). ``fit`` holds out ``validation_fraction`` of the rows (or takes
``validation_data``) for early stopping and the covariance calibration, exactly as the command line does
with its validation split. Of the data it keeps only the training inputs' mean and covariance (for the
service's out-of-distribution score) and up to 256 validation rows, on which an export is verified.
Predictions are in the data's raw units.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from pydantic import ValidationError
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted, validate_data

from covserve.distribution import PredictiveDistribution
from covserve.training.config import ModelConfig, RunConfig, TrainConfig
from covserve.training.data import Protocol, Split, Table, check_column_scales
from covserve.training.errors import UsageError
from covserve.training.export import ModelCard
from covserve.training.metrics import compute_metrics
from covserve.training.pipeline import VERIFICATION_ROWS, model_card, publish_card
from covserve.training.trainer import predict_raw, train

__all__ = ["CovarianceRegressor"]

_TRAIN = TrainConfig.model_fields
_MODEL = ModelConfig.model_fields

VALIDATION_FRACTION = 0.1
"""Rows held out for early stopping and calibration when ``validation_data`` is not given: the command
line's default (``--validation-fraction``)."""

MIN_VALIDATION_ROWS = 2
MIN_TRAINING_ROWS = 2
_VECTOR_NDIM = 1


class CovarianceRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Mean and input-dependent full covariance of ``Y | X``; a scikit-learn regressor.

    Parameters are the training options of ``covserve-train fit`` (``covserve-train fit --help`` explains
    each) plus ``validation_fraction`` and ``progress`` (progress bars). After ``fit``:
    ``n_features_in_``, ``feature_names_in_`` (DataFrame inputs), ``target_names_``, ``model_`` (the torch
    module, on the CPU), ``history_`` (one record per epoch), ``best_epoch_``,
    ``covariance_calibration_`` and ``validation_metrics_``.

    ``predict`` returns means ``(N, D)`` (``(N,)`` when ``Y`` was one-dimensional), ``score`` the mean
    log-likelihood of the rows (higher is better, so ``GridSearchCV`` and ``cross_val_score`` maximise it).
    """

    def __init__(
        self,
        method: str = _TRAIN["method"].default.value,
        labels: str = _TRAIN["labels"].default.value,
        epochs: int = _TRAIN["epochs"].default,
        batch_size: int = _TRAIN["batch_size"].default,
        lr: float = _TRAIN["lr"].default,
        weight_decay: float = _TRAIN["weight_decay"].default,
        patience: int = _TRAIN["patience"].default,
        grad_clip: float = _TRAIN["grad_clip"].default,
        hybrid_epochs: int | None = _TRAIN["hybrid_epochs"].default,
        label_refresh: int = _TRAIN["label_refresh"].default,
        neighbours: int | None = _TRAIN["neighbours"].default,
        temperature: float = _TRAIN["temperature"].default,
        neighbour_index: str = _TRAIN["neighbour_index"].default.value,
        calibrate: bool = _TRAIN["calibrate"].default,
        width: int | None = _MODEL["width"].default,
        depth: int = _MODEL["depth"].default,
        device: str = _TRAIN["device"].default.value,
        threads: int = _TRAIN["threads"].default,
        seed: int = _TRAIN["seed"].default,
        validation_fraction: float = VALIDATION_FRACTION,
        progress: bool = False,
    ) -> None:
        self.method = method
        self.labels = labels
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.grad_clip = grad_clip
        self.hybrid_epochs = hybrid_epochs
        self.label_refresh = label_refresh
        self.neighbours = neighbours
        self.temperature = temperature
        self.neighbour_index = neighbour_index
        self.calibrate = calibrate
        self.width = width
        self.depth = depth
        self.device = device
        self.threads = threads
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.progress = progress

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        # score is the log-likelihood, not R², so sklearn's R² threshold for regressors does not apply
        tags.regressor_tags.poor_score = True
        return tags

    def _configs(self) -> tuple[TrainConfig, ModelConfig]:
        """The parameters as the trainer's configuration; ``ValueError`` naming the parameter at fault."""
        train_fields = {
            name: value for name, value in self.get_params().items() if name in TrainConfig.model_fields
        }
        try:
            return TrainConfig(**train_fields), ModelConfig(width=self.width, depth=self.depth)
        except ValidationError as error:
            first = error.errors()[0]
            location = ".".join(str(part) for part in first["loc"]) or "parameters"
            raise ValueError(f"CovarianceRegressor({location}=...): {first['msg']}") from None

    def fit(
        self,
        X: ArrayLike,
        Y: ArrayLike,
        validation_data: tuple[ArrayLike, ArrayLike] | None = None,
    ) -> CovarianceRegressor:
        """Train on ``X`` ``(N, M)`` and ``Y`` ``(N, D)`` or ``(N,)``; numpy arrays or pandas DataFrames
        (their column names become the model's input and target names).

        ``validation_data`` ``(X_val, Y_val)`` replaces the ``validation_fraction`` of the rows held out
        (seeded by ``seed``) for early stopping and the covariance calibration.
        """
        train_config, model_config = self._configs()
        inputs, targets = _writable(
            *validate_data(self, X, Y, multi_output=True, y_numeric=True, dtype=np.float64)
        )
        self._one_target = np.ndim(targets) == _VECTOR_NDIM
        targets = _as_matrix(targets)
        target_names = _column_names(Y, targets.shape[1])
        input_names = tuple(getattr(self, "feature_names_in_", [f"x{i}" for i in range(inputs.shape[1])]))
        data = Table(inputs, targets, input_names, target_names)
        split = self._split(data, validation_data)
        try:
            check_column_scales(split.train, Protocol.HOLDOUT)
            with tempfile.TemporaryDirectory(prefix="covserve-estimator-") as checkpoints:
                result = train(
                    split, train_config, model_config, run_dir=Path(checkpoints), progress=self.progress
                )
        except UsageError as error:
            raise ValueError(str(error)) from None
        self.model_ = result.model.cpu().eval()
        self.target_names_ = target_names
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.covariance_calibration_ = result.covariance_calibration
        mean, covariance = predict_raw(self.model_, split.validation.inputs, torch.device("cpu"))
        self.validation_metrics_ = compute_metrics(mean, covariance, split.validation.targets)
        search = None if result.neighbour_search is None else result.neighbour_search.as_dict()
        config = RunConfig(name="model", train=train_config, model=model_config)
        self.card_: ModelCard = model_card(config, split, self.validation_metrics_, search)
        self.verification_inputs_ = split.validation.inputs[:VERIFICATION_ROWS].copy()
        return self

    def _split(self, data: Table, validation_data: tuple[ArrayLike, ArrayLike] | None) -> Split:
        """Training and validation tables (no test part: the caller scores on data of its own)."""
        empty = data.rows(np.arange(0))
        if validation_data is not None:
            inputs, targets = _writable(
                *validate_data(
                    self, *validation_data, reset=False, multi_output=True, y_numeric=True, dtype=np.float64
                )
            )
            targets = _as_matrix(targets)
            if targets.shape[1] != data.targets.shape[1]:
                raise ValueError(
                    f"validation_data: {targets.shape[1]} targets, but Y has {data.targets.shape[1]}"
                )
            validation = Table(inputs, targets, data.input_names, data.target_names)
            description = f"{len(data)} training rows and {len(validation)} validation rows given to fit"
            return Split(data, validation, empty, description)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction: expected a fraction in (0, 1), got {self.validation_fraction}"
            )
        rows = len(data)
        held_out = max(MIN_VALIDATION_ROWS, round(self.validation_fraction * rows))
        if rows - held_out < MIN_TRAINING_ROWS:
            raise ValueError(
                f"CovarianceRegressor needs at least {MIN_VALIDATION_ROWS + MIN_TRAINING_ROWS} rows "
                f"(training and validation rows), got n_samples = {rows}"
            )
        order = np.random.default_rng(self.seed).permutation(rows)
        description = (
            f"{rows} rows given to fit: {rows - held_out} training, {held_out} validation "
            f"(validation_fraction {self.validation_fraction:g}, seed {self.seed})"
        )
        return Split(data.rows(order[held_out:]), data.rows(order[:held_out]), empty, description)

    def _inputs(self, X: ArrayLike) -> NDArray[np.float64]:
        check_is_fitted(self)
        (inputs,) = _writable(validate_data(self, X, reset=False, dtype=np.float64))
        return inputs

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """Means ``(N, D)`` in raw units (``(N,)`` when the model was fitted on a one-dimensional ``Y``)."""
        inputs = self._inputs(X)
        mean, _ = predict_raw(self.model_, inputs, torch.device("cpu"))
        return mean[:, 0] if self._one_target else mean

    def predict_distribution(self, X: ArrayLike) -> PredictiveDistribution:
        """Every row's predictive normal: ``mean`` ``(N, D)``, ``covariance`` ``(N, D, D)``, ``scale``,
        ``logpdf(Y)``, ``sample(n, seed)``, ``interval(level)``, ``condition(observed)``."""
        inputs = self._inputs(X)
        mean, covariance = predict_raw(self.model_, inputs, torch.device("cpu"))
        return PredictiveDistribution(mean, covariance, self.target_names_)

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """Mean log-likelihood of the rows of ``y`` under their predictive normals, in nats per row
        (weighted by ``sample_weight`` when given); higher is better."""
        distribution = self.predict_distribution(X)
        targets = _as_matrix(np.asarray(y, dtype=np.float64))
        log_likelihood = distribution.logpdf(targets)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        return float(np.average(log_likelihood, weights=weights))

    def export(self, repository: str | Path, name: str, *, allow_schema_change: bool = False) -> Path:
        """Publish the model as the next version of ``name`` in ``repository``, as ``covserve-train fit``
        does (ONNX, verified against torch on validation rows, written atomically); returns the version
        directory. ``model.json``'s test metrics are the validation rows' (fit holds no test split)."""
        check_is_fitted(self)
        try:
            config = RunConfig(name=name, repository=Path(repository))
        except ValidationError:
            raise ValueError(
                f"name: {name!r} is not a model name (letters, digits, '.', '_' and '-', not first)"
            ) from None
        if self.model_.kind.value == "tic":
            raise ValueError(
                f"method {self.method!r}: the tic covariance has no ONNX form; it cannot be exported"
            )
        card = dataclasses.replace(self.card_, name=config.name)
        try:
            return publish_card(
                self.model_, card, config.repository, self.verification_inputs_, allow_schema_change
            )
        except UsageError as error:
            raise ValueError(str(error)) from None


def _column_names(targets: Any, width: int) -> tuple[str, ...]:
    """The target names of ``width`` columns: a DataFrame's column names or a Series' name when they are
    strings, else ``y0, y1, …``."""
    columns = getattr(targets, "columns", None)
    if columns is not None and len(columns) == width and all(isinstance(name, str) for name in columns):
        return tuple(columns)
    name = getattr(targets, "name", None)
    if width == 1 and isinstance(name, str):
        return (name,)
    return tuple(f"y{index}" for index in range(width))


def _writable(*arrays: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """``arrays``, copied where read-only (pandas' copy-on-write views): torch refuses to wrap those."""
    return tuple(array if array.flags.writeable else array.copy() for array in arrays)


def _as_matrix(targets: NDArray[np.float64]) -> NDArray[np.float64]:
    return targets[:, None] if targets.ndim == _VECTOR_NDIM else targets

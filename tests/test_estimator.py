"""``CovarianceRegressor``: scikit-learn's own checks, its model-selection tools, pickling, pandas names,
and an export that the service loads and answers exactly as the estimator predicts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from covserve import CovarianceRegressor, PredictiveDistribution
from covserve.service import Settings
from covserve.service._metrics import ServiceMetrics
from covserve.service._registry import ServedModels
from covserve.training.synthetic import multivariate


def _fast() -> CovarianceRegressor:
    """Small networks and few epochs: these tests check the plumbing, the benchmarks the accuracy."""
    return CovarianceRegressor(epochs=2, width=8, depth=1)


def _data(
    samples: int = 300, in_dim: int = 3, out_dim: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    data = multivariate(in_dim=in_dim, out_dim=out_dim, samples=samples, seed=seed)
    return data.inputs, data.targets


EXPECTED_FAILED_CHECKS: dict[str, str] = {}
"""sklearn checks this estimator does not pass, each with the reason (none at present)."""


_CHECKS = parametrize_with_checks([_fast()], expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS)
"""scikit-learn's ``parametrize`` mark; its checks come as a generator, which pytest is deprecating, so
they are listed below."""


@pytest.mark.parametrize(_CHECKS.args[0], list(_CHECKS.args[1]), **_CHECKS.kwargs)
def test_scikit_learn_estimator_checks(estimator: CovarianceRegressor, check: Any) -> None:
    check(estimator)


def test_fit_predict_score_and_the_distribution() -> None:
    inputs, targets = _data()
    model = CovarianceRegressor(epochs=5).fit(inputs[:250], targets[:250])
    assert model.predict(inputs[250:]).shape == (50, 2)
    distribution = model.predict_distribution(inputs[250:])
    assert isinstance(distribution, PredictiveDistribution)
    assert distribution.covariance.shape == (50, 2, 2)
    assert distribution.target_names == ("y0", "y1")
    score = model.score(inputs[250:], targets[250:])
    assert score == pytest.approx(float(distribution.logpdf(targets[250:]).mean()))
    assert np.isfinite(score)
    assert len(model.history_) == 5
    assert 1 <= model.best_epoch_ <= 5
    assert model.validation_metrics_["samples"] == 25  # validation_fraction 0.1 of 250 rows


def test_cross_val_score_returns_finite_log_likelihoods() -> None:
    inputs, targets = _data()
    scores = cross_val_score(CovarianceRegressor(epochs=3), inputs, targets, cv=3)
    assert scores.shape == (3,)
    assert np.isfinite(scores).all()


def test_pipeline_and_grid_search_maximise_the_log_likelihood() -> None:
    inputs, targets = _data(samples=200)
    pipeline = make_pipeline(StandardScaler(), _fast())
    search = GridSearchCV(pipeline, {"covarianceregressor__lr": [1e-6, 3e-3]}, cv=2).fit(inputs, targets)
    means = search.cv_results_["mean_test_score"]
    assert np.isfinite(means).all()
    assert search.best_params_["covarianceregressor__lr"] == [1e-6, 3e-3][int(np.argmax(means))]
    assert search.predict(inputs[:4]).shape == (4, 2)


def test_dataframes_keep_their_names_and_one_target_predicts_a_vector() -> None:
    inputs, targets = _data(out_dim=1)
    frame = pd.DataFrame(inputs, columns=["temperature", "pressure", "flow"])
    model = _fast().fit(frame, pd.Series(targets[:, 0], name="yield"))
    assert list(model.feature_names_in_) == ["temperature", "pressure", "flow"]
    assert model.target_names_ == ("yield",)
    assert model.predict(frame.iloc[:3]).shape == (3,)
    with pytest.raises(ValueError, match="feature names"):
        model.predict(frame[["pressure", "temperature", "flow"]].iloc[:3])


def test_validation_data_replaces_the_held_out_fraction() -> None:
    inputs, targets = _data()
    held_out = (inputs[200:], targets[200:])
    model = _fast().fit(inputs[:200], targets[:200], validation_data=held_out)
    assert model.validation_metrics_["samples"] == 100
    with pytest.raises(ValueError, match="validation_data: 1 targets, but Y has 2"):
        _fast().fit(inputs, targets, validation_data=(inputs, targets[:, :1]))


def test_bad_parameters_and_data_are_value_errors_naming_them() -> None:
    inputs, targets = _data(samples=60)
    with pytest.raises(ValueError, match=r"CovarianceRegressor\(method=...\): .*expected one of"):
        CovarianceRegressor(method="bogus").fit(inputs, targets)
    with pytest.raises(ValueError, match=r"CovarianceRegressor\(epochs=...\)"):
        CovarianceRegressor(epochs=0).fit(inputs, targets)
    with pytest.raises(ValueError, match="validation_fraction: expected a fraction in"):
        CovarianceRegressor(validation_fraction=1.5).fit(inputs, targets)
    with pytest.raises(ValueError, match=r"at least 4 rows .*n_samples = 3"):
        _fast().fit(inputs[:3], targets[:3])


def test_a_fitted_estimator_pickles_and_reloads() -> None:
    inputs, targets = _data(samples=120)
    model = _fast().fit(inputs, targets)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(inputs), model.predict(inputs))
    np.testing.assert_array_equal(
        again.predict_distribution(inputs).covariance, model.predict_distribution(inputs).covariance
    )


def test_export_publishes_what_the_service_serves(tmp_path: Path) -> None:
    inputs, targets = _data()
    frame = pd.DataFrame(inputs, columns=["a", "b", "c"])
    model = _fast().fit(frame, pd.DataFrame(targets, columns=["u", "v"]))
    version = model.export(tmp_path / "models", "plant")
    assert version == tmp_path / "models" / "plant" / "1"
    card = json.loads((version / "model.json").read_text())
    assert card["neighbour_search"]["index"] == "exact"
    assert card["data"]["split_sizes"] == {"train": 270, "validation": 30, "test": 0}
    assert set(card["test_metrics"]) >= {"nll", "mse"}  # the validation rows': fit holds no test split
    served = ServedModels(Settings(repository=tmp_path / "models", threads=1), ServiceMetrics())
    served.refresh()
    loaded = served.get("plant")
    assert loaded.version.input_names == ("a", "b", "c")
    assert loaded.version.target_names == ("u", "v")
    assert loaded.version.metadata.method == "w2-bound"
    assert loaded.version.metadata.labels == "residuals"
    prediction = loaded.run_checked(loaded.checked(inputs[:20]))
    distribution = model.predict_distribution(frame.iloc[:20])
    np.testing.assert_allclose(prediction.mean, distribution.mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prediction.covariance, distribution.covariance, rtol=1e-4, atol=1e-4)
    assert model.export(tmp_path / "models", "plant").name == "2"
    narrower = _fast().fit(frame[["a", "b"]], targets)
    with pytest.raises(ValueError, match="other columns than this run"):
        narrower.export(tmp_path / "models", "plant")
    assert narrower.export(tmp_path / "models", "plant", allow_schema_change=True).name == "3"
    with pytest.raises(ValueError, match="is not a model name"):
        model.export(tmp_path / "models", "../escape")

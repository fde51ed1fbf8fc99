"""``PredictiveDistribution`` against naive references: scipy's densities and quantiles, and the
conditioning formulas written out with explicit inverses, one row at a time."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from covserve import PredictiveDistribution

ROWS = 5
DIM = 3


def _random(seed: int = 0, rows: int = ROWS, dim: int = DIM) -> PredictiveDistribution:
    generator = np.random.default_rng(seed)
    factors = generator.normal(size=(rows, dim, dim))
    covariance = factors @ np.swapaxes(factors, -1, -2) + 0.5 * np.eye(dim)
    return PredictiveDistribution(
        generator.normal(size=(rows, dim)), covariance, tuple(f"y{i}" for i in range(dim))
    )


def test_logpdf_matches_scipy_row_by_row() -> None:
    distribution = _random()
    targets = np.random.default_rng(1).normal(size=(ROWS, DIM)) * 2
    want = [
        stats.multivariate_normal(distribution.mean[i], distribution.covariance[i]).logpdf(targets[i])
        for i in range(ROWS)
    ]
    np.testing.assert_allclose(distribution.logpdf(targets), want, rtol=1e-10)


def test_scale_is_the_lower_cholesky_factor() -> None:
    distribution = _random()
    scale = distribution.scale
    np.testing.assert_allclose(scale @ np.swapaxes(scale, -1, -2), distribution.covariance, rtol=1e-12)
    assert np.all(np.triu(scale, k=1) == 0)


def test_samples_have_the_mean_and_covariance_and_follow_the_seed() -> None:
    distribution = _random(rows=2)
    draws = distribution.sample(40_000, seed=3)
    assert draws.shape == (40_000, 2, DIM)
    np.testing.assert_allclose(draws.mean(axis=0), distribution.mean, atol=0.06)
    for row in range(2):
        sample_covariance = np.cov(draws[:, row].T)
        np.testing.assert_allclose(sample_covariance, distribution.covariance[row], rtol=0.05, atol=0.05)
    np.testing.assert_array_equal(distribution.sample(3, seed=4), distribution.sample(3, seed=4))
    with pytest.raises(ValueError, match="positive number of samples"):
        distribution.sample(0)


def test_interval_matches_normal_quantiles() -> None:
    distribution = _random()
    lower, upper = distribution.interval(0.8)
    std = np.sqrt(np.diagonal(distribution.covariance, axis1=1, axis2=2))
    np.testing.assert_allclose(lower, stats.norm.ppf(0.1, distribution.mean, std), rtol=1e-9)
    np.testing.assert_allclose(upper, stats.norm.ppf(0.9, distribution.mean, std), rtol=1e-9)
    np.testing.assert_allclose(distribution.std, std)


@pytest.mark.parametrize("key", ["y1", 1])
def test_condition_matches_the_explicit_formula(key: str | int) -> None:
    distribution = _random()
    values = np.linspace(-1, 1, ROWS)
    conditional = distribution.condition({key: values})
    assert conditional.target_names == ("y0", "y2")
    for row in range(ROWS):
        mean, covariance = distribution.mean[row], distribution.covariance[row]
        free, fixed = [0, 2], [1]
        gain = covariance[np.ix_(free, fixed)] @ np.linalg.inv(covariance[np.ix_(fixed, fixed)])
        want_mean = mean[free] + gain @ (values[row : row + 1] - mean[fixed])
        want_covariance = covariance[np.ix_(free, free)] - gain @ covariance[np.ix_(fixed, free)]
        np.testing.assert_allclose(conditional.mean[row], want_mean, rtol=1e-10)
        np.testing.assert_allclose(conditional.covariance[row], want_covariance, rtol=1e-10, atol=1e-12)


def test_condition_broadcasts_a_scalar_and_refuses_unknown_targets() -> None:
    distribution = _random()
    scalar = distribution.condition({"y0": 0.5, "y2": -1.0})
    assert scalar.mean.shape == (ROWS, 1)
    assert scalar.target_names == ("y1",)
    with pytest.raises(ValueError, match=r"unknown target 'z'; the targets are \['y0', 'y1', 'y2'\]"):
        distribution.condition({"z": 1.0})
    with pytest.raises(ValueError, match="outside"):
        distribution.condition({7: 1.0})
    with pytest.raises(ValueError, match="must stay unobserved"):
        distribution.condition({"y0": 0.0, "y1": 0.0, "y2": 0.0})


def test_bad_arrays_are_refused_by_name() -> None:
    good = _random()
    broken = good.covariance.copy()
    broken[2] = -np.eye(DIM)
    with pytest.raises(ValueError, match="covariance: row 2 is not symmetric positive definite"):
        PredictiveDistribution(good.mean, broken, good.target_names)
    with pytest.raises(ValueError, match=r"mean must be \(N, D\)"):
        PredictiveDistribution(good.mean[:, :2], good.covariance, good.target_names)
    with pytest.raises(ValueError, match="2 target names for 3 targets"):
        PredictiveDistribution(good.mean, good.covariance, ("a", "b"))
    with pytest.raises(ValueError, match=r"targets: expected shape \(5, 3\)"):
        good.logpdf(np.zeros((5, 2)))


def test_pickles_and_imports_without_torch() -> None:
    distribution = _random()
    _ = distribution.scale
    again = pickle.loads(pickle.dumps(distribution))
    np.testing.assert_array_equal(again.covariance, distribution.covariance)
    np.testing.assert_array_equal(again.scale, distribution.scale)
    probe = "import sys, covserve; covserve.PredictiveDistribution; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True)

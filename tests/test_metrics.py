"""Tests of ``training.metrics`` against independent naive references (SciPy, PyTorch, scoringrules, loops).

Statistical checks use fixed seeds and tolerances of several standard errors for the sample sizes used.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scoringrules
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray
from scipy import stats

from covserve.training.metrics import (
    DEFAULT_LEVELS,
    calibrated_gaussian_nll,
    calibration,
    conditional_residuals,
    energy_score,
    gaussian_nll,
    kl_to_truth,
    mahalanobis_squared,
    mse,
    sample_gaussian,
    tac,
    variance_calibration,
    wasserstein_to_truth,
)

FloatArray = NDArray[np.float64]

DIMENSIONS = (1, 2, 3, 5, 8)
EXACT_RTOL = 1e-10
"""Relative tolerance between two float64 evaluations of the same closed form."""

TAC_RTOL = 1e-8
"""Relative tolerance between vectorised TAC and the per-dimension conditioning loop."""

CALIBRATION_SAMPLES = 20_000
COVERAGE_TOLERANCE = 0.02
"""Standard error of a coverage fraction is at most ``sqrt(0.25 / 20_000) = 0.0035``: about six of them."""

MOMENT_SAMPLES = 200_000
MOMENT_TOLERANCE = 0.02
"""Standard error of a sample mean or covariance entry (unit-scale Gaussians) is below ``0.0035``."""


def random_spd(rng: np.random.Generator, num: int, dim: int) -> FloatArray:
    """Random SPD batch ``A A^T / D + 0.1 I`` with standard-normal ``A``, shape (num, dim, dim)."""
    factor = rng.standard_normal((num, dim, dim))
    spd: FloatArray = factor @ np.swapaxes(factor, -1, -2) / dim + 0.1 * np.eye(dim)
    return spd


def random_problem(seed: int, num: int, dim: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num, dim)), random_spd(rng, num, dim), rng.standard_normal((num, dim))


def naive_conditional_residuals(mean: FloatArray, covariance: FloatArray, target: FloatArray) -> FloatArray:
    """y_i - (mu_i + S_{i,-i} S_{-i,-i}^-1 (y_-i - mu_-i)), one sample and one dimension at a time."""
    num, dim = mean.shape
    residuals = np.empty((num, dim))
    for n in range(num):
        for i in range(dim):
            others = np.arange(dim) != i
            conditional_mean = mean[n, i]
            if dim > 1:
                gain = covariance[n, i, others] @ np.linalg.inv(covariance[n][np.ix_(others, others)])
                conditional_mean += gain @ (target[n, others] - mean[n, others])
            residuals[n, i] = target[n, i] - conditional_mean
    return residuals


def test_mse_is_the_per_dimension_mean() -> None:
    mean = np.array([[0.0, 0.0], [1.0, 1.0]])
    target = np.array([[1.0, 2.0], [1.0, -1.0]])
    assert mse(mean, target) == pytest.approx((1.0 + 4.0 + 0.0 + 4.0) / 4.0, rel=EXACT_RTOL)


def test_float32_inputs_are_computed_in_float64() -> None:
    mean, covariance, target = random_problem(0, 64, 4)
    mean32, covariance32, target32 = (a.astype(np.float32) for a in (mean, covariance, target))
    mean64, covariance64, target64 = (a.astype(np.float64) for a in (mean32, covariance32, target32))
    assert mse(mean32, target32) == np.mean((target64 - mean64) ** 2)
    assert gaussian_nll(mean32, covariance32, target32) == pytest.approx(
        gaussian_nll(mean64, covariance64, target64), rel=EXACT_RTOL
    )
    assert isinstance(tac(mean32, covariance32, target32), float)


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_gaussian_nll_matches_scipy_and_torch(dim: int) -> None:
    mean, covariance, target = random_problem(dim, 40, dim)
    log_pdf = [stats.multivariate_normal.logpdf(target[n], mean[n], covariance[n]) for n in range(len(mean))]
    torch_log_prob = torch.distributions.MultivariateNormal(
        torch.from_numpy(mean), covariance_matrix=torch.from_numpy(covariance)
    ).log_prob(torch.from_numpy(target))
    nll = gaussian_nll(mean, covariance, target)
    assert nll == pytest.approx(-np.mean(log_pdf), rel=EXACT_RTOL)
    assert nll == pytest.approx(-torch_log_prob.mean().item(), rel=EXACT_RTOL)


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_mahalanobis_squared_matches_explicit_inverse(dim: int) -> None:
    mean, covariance, target = random_problem(10 + dim, 30, dim)
    residual = target - mean
    expected = np.einsum("ni,nij,nj->n", residual, np.linalg.inv(covariance), residual)
    np.testing.assert_allclose(mahalanobis_squared(mean, covariance, target), expected, rtol=EXACT_RTOL)


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_tac_matches_naive_conditioning_loop(dim: int) -> None:
    mean, covariance, target = random_problem(20 + dim, 50, dim)
    expected = naive_conditional_residuals(mean, covariance, target)
    np.testing.assert_allclose(
        conditional_residuals(mean, covariance, target),
        expected,
        rtol=TAC_RTOL,
        atol=TAC_RTOL * np.max(np.abs(expected)),
    )
    assert tac(mean, covariance, target) == pytest.approx(np.mean(np.abs(expected)), rel=TAC_RTOL)


@st.composite
def gaussian_problems(draw: st.DrawFn) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Means, SPD covariances ``A A^T + 0.1 I`` (entries of A in [-2, 2]) and targets."""
    dim = draw(st.sampled_from(DIMENSIONS))
    num = draw(st.integers(min_value=1, max_value=6))
    entries = st.floats(min_value=-2.0, max_value=2.0)
    values = st.floats(min_value=-10.0, max_value=10.0)
    factor = draw(hnp.arrays(np.float64, (num, dim, dim), elements=entries))
    covariance = factor @ np.swapaxes(factor, -1, -2) + 0.1 * np.eye(dim)
    mean = draw(hnp.arrays(np.float64, (num, dim), elements=values))
    target = draw(hnp.arrays(np.float64, (num, dim), elements=values))
    return mean, covariance, target


@settings(max_examples=60, deadline=None)
@given(problem=gaussian_problems())
def test_tac_matches_naive_conditioning_loop_on_random_spd(
    problem: tuple[FloatArray, FloatArray, FloatArray],
) -> None:
    mean, covariance, target = problem
    expected = naive_conditional_residuals(mean, covariance, target)
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(
        conditional_residuals(mean, covariance, target), expected, rtol=TAC_RTOL, atol=TAC_RTOL * scale
    )
    assert tac(mean, covariance, target) == pytest.approx(
        np.mean(np.abs(expected)), rel=TAC_RTOL, abs=TAC_RTOL * scale
    )


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_tac_with_diagonal_covariance_is_mean_absolute_error(dim: int) -> None:
    rng = np.random.default_rng(30 + dim)
    mean, target = rng.standard_normal((2, 25, dim))
    covariance = np.eye(dim) * rng.uniform(0.1, 3.0, size=(25, dim, 1))
    assert tac(mean, covariance, target) == pytest.approx(np.mean(np.abs(target - mean)), rel=EXACT_RTOL)


def test_tac_uses_correlations() -> None:
    covariance = np.array([[[1.0, 0.9], [0.9, 1.0]]])
    mean = np.zeros((1, 2))
    target = np.array([[1.0, 1.0]])
    # y_1 given y_2 = 1 has conditional mean 0.9, so each residual is 0.1 instead of the marginal 1.
    assert tac(mean, covariance, target) == pytest.approx(0.1, rel=EXACT_RTOL)
    assert mse(mean, target) == pytest.approx(1.0)


def draw_targets(seed: int, dim: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Means, covariances and one target drawn from each Gaussian, ``CALIBRATION_SAMPLES`` rows."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((CALIBRATION_SAMPLES, dim))
    covariance = random_spd(rng, CALIBRATION_SAMPLES, dim)
    noise = rng.standard_normal((CALIBRATION_SAMPLES, dim, 1))
    target = mean + (np.linalg.cholesky(covariance) @ noise)[..., 0]
    return mean, covariance, target


def test_calibration_of_true_gaussians_matches_levels() -> None:
    mean, covariance, target = draw_targets(40, 3)
    result = calibration(mean, covariance, target)
    np.testing.assert_array_equal(result.levels, DEFAULT_LEVELS)
    np.testing.assert_allclose(result.coverage, DEFAULT_LEVELS, atol=COVERAGE_TOLERANCE)
    assert result.error < COVERAGE_TOLERANCE / 2
    assert result.error == pytest.approx(np.mean(np.abs(result.coverage - result.levels)))
    assert not result.coverage.flags.writeable


@pytest.mark.parametrize(("scale", "under_confident"), [(4.0, True), (0.25, False)])
def test_calibration_detects_miscalibrated_scale(scale: float, under_confident: bool) -> None:
    mean, covariance, target = draw_targets(41, 5)
    levels = np.array(DEFAULT_LEVELS)
    result = calibration(mean, scale * covariance, target, levels=levels)
    # The predicted squared distance is m / scale with m ~ chi2(D), so coverage(a) = F(scale * F^-1(a)).
    expected = stats.chi2.cdf(scale * stats.chi2.ppf(levels, 5), 5)
    np.testing.assert_allclose(result.coverage, expected, atol=COVERAGE_TOLERANCE)
    if under_confident:
        assert np.all(result.coverage > levels)
    else:
        assert np.all(result.coverage < levels)
    assert result.error > 5 * COVERAGE_TOLERANCE


def test_calibration_uses_chi_squared_quantiles() -> None:
    # With D = 1 the ellipsoid of level a is |r| <= sigma * Phi^-1((1 + a) / 2).
    level = 0.9
    half_width = stats.norm.ppf((1.0 + level) / 2.0)
    target = np.array([[0.999 * half_width], [1.001 * half_width], [-0.5 * half_width], [-2.0 * half_width]])
    result = calibration(np.zeros((4, 1)), np.ones((4, 1, 1)), target, levels=[level])
    np.testing.assert_array_equal(result.coverage, [0.5])
    assert result.error == pytest.approx(0.4)


@pytest.mark.parametrize("levels", [[0.0, 0.5], [0.5, 1.0], [[0.5]], []])
def test_calibration_rejects_invalid_levels(levels: list[float] | list[list[float]]) -> None:
    mean, covariance, target = random_problem(0, 4, 2)
    with pytest.raises(ValueError, match=r"^levels: expected"):
        calibration(mean, covariance, target, levels=levels)


def test_sample_gaussian_moments_and_seed() -> None:
    mean = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    covariance = random_spd(np.random.default_rng(50), 2, 3)
    samples = sample_gaussian(mean, covariance, MOMENT_SAMPLES, seed=7)
    assert samples.shape == (2, MOMENT_SAMPLES, 3)
    np.testing.assert_array_equal(samples, sample_gaussian(mean, covariance, MOMENT_SAMPLES, seed=7))
    assert not np.array_equal(samples[:, :10], sample_gaussian(mean, covariance, 10, seed=8))
    for n in range(2):
        np.testing.assert_allclose(samples[n].mean(axis=0), mean[n], atol=MOMENT_TOLERANCE)
        np.testing.assert_allclose(np.cov(samples[n], rowvar=False), covariance[n], atol=MOMENT_TOLERANCE)


def test_sample_gaussian_rejects_zero_samples() -> None:
    mean, covariance, _ = random_problem(0, 2, 2)
    with pytest.raises(ValueError, match=r"^num_samples: expected an integer >= 1, got 0$"):
        sample_gaussian(mean, covariance, 0, seed=0)


@pytest.mark.parametrize(("num", "dim", "num_samples"), [(7, 1, 32), (5, 3, 100), (10, 16, 256)])
def test_energy_score_matches_scoringrules(num: int, dim: int, num_samples: int) -> None:
    mean, covariance, target = random_problem(60 + dim, num, dim)
    samples = sample_gaussian(mean, covariance, num_samples, seed=3)
    expected = float(np.mean(scoringrules.es_ensemble(target, samples)))
    result = energy_score(mean, covariance, target, num_samples=num_samples, seed=3)
    assert result == pytest.approx(expected, rel=EXACT_RTOL)


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 4.0), (0.0, 0.25), (1.0, 1.0)])
def test_energy_score_prefers_the_true_distribution(shift: float, scale: float) -> None:
    rng = np.random.default_rng(70)
    num, dim = 400, 3
    mean = rng.standard_normal((num, dim))
    covariance = random_spd(rng, num, dim)
    target = mean + (np.linalg.cholesky(covariance) @ rng.standard_normal((num, dim, 1)))[..., 0]
    true_score = energy_score(mean, covariance, target, num_samples=64)
    wrong_score = energy_score(mean + shift, scale * covariance, target, num_samples=64)
    assert true_score < wrong_score


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_kl_matches_torch(dim: int) -> None:
    rng = np.random.default_rng(80 + dim)
    true_mean, mean = rng.standard_normal((2, 30, dim))
    true_covariance, covariance = random_spd(rng, 30, dim), random_spd(rng, 30, dim)
    expected = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(
            torch.from_numpy(true_mean), covariance_matrix=torch.from_numpy(true_covariance)
        ),
        torch.distributions.MultivariateNormal(
            torch.from_numpy(mean), covariance_matrix=torch.from_numpy(covariance)
        ),
    )
    assert kl_to_truth(true_mean, true_covariance, mean, covariance) == pytest.approx(
        expected.mean().item(), rel=EXACT_RTOL
    )
    assert kl_to_truth(true_mean, true_covariance, true_mean, true_covariance) == pytest.approx(
        0.0, abs=1e-12
    )


def test_kl_penalises_over_confidence_more() -> None:
    # One dimension, variance ratio s = predicted / true: KL = 0.5 (1 / s - 1 + log s).
    zeros, ones = np.zeros((1, 1)), np.ones((1, 1, 1))
    over_confident = kl_to_truth(zeros, ones, zeros, 0.25 * ones)
    under_confident = kl_to_truth(zeros, ones, zeros, 4.0 * ones)
    assert over_confident == pytest.approx(0.5 * (4.0 - 1.0 + np.log(0.25)), rel=EXACT_RTOL)
    assert under_confident == pytest.approx(0.5 * (0.25 - 1.0 + np.log(4.0)), rel=EXACT_RTOL)
    assert over_confident > 2 * under_confident


def reference_wasserstein(
    true_mean: FloatArray, true_covariance: FloatArray, mean: FloatArray, covariance: FloatArray
) -> float:
    distances = []
    for mu_1, sigma_1, mu_2, sigma_2 in zip(true_mean, true_covariance, mean, covariance, strict=True):
        root_2 = scipy.linalg.sqrtm(sigma_2)
        cross = scipy.linalg.sqrtm(root_2 @ sigma_1 @ root_2)
        distances.append(np.sum((mu_1 - mu_2) ** 2) + np.trace(sigma_1 + sigma_2 - 2.0 * cross))
    return float(np.mean(distances))


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_wasserstein_matches_sqrtm_reference(dim: int) -> None:
    rng = np.random.default_rng(90 + dim)
    true_mean, mean = rng.standard_normal((2, 30, dim))
    true_covariance, covariance = random_spd(rng, 30, dim), random_spd(rng, 30, dim)
    assert wasserstein_to_truth(true_mean, true_covariance, mean, covariance) == pytest.approx(
        reference_wasserstein(true_mean, true_covariance, mean, covariance), rel=EXACT_RTOL
    )
    assert wasserstein_to_truth(true_mean, true_covariance, true_mean, true_covariance) == pytest.approx(
        0.0, abs=1e-12
    )


def test_wasserstein_of_diagonal_covariances_has_closed_form() -> None:
    rng = np.random.default_rng(100)
    true_mean, mean = rng.standard_normal((2, 20, 4))
    true_variance, variance = rng.uniform(0.1, 3.0, size=(2, 20, 4))
    expected = np.mean(
        np.sum((true_mean - mean) ** 2, axis=-1)
        + np.sum((np.sqrt(true_variance) - np.sqrt(variance)) ** 2, axis=-1)
    )
    result = wasserstein_to_truth(
        true_mean, true_variance[..., None] * np.eye(4), mean, variance[..., None] * np.eye(4)
    )
    assert result == pytest.approx(expected, rel=EXACT_RTOL)


MetricCall = Callable[[FloatArray, FloatArray, FloatArray], object]

PREDICTIVE_METRICS: dict[str, MetricCall] = {
    "gaussian_nll": gaussian_nll,
    "mahalanobis_squared": mahalanobis_squared,
    "tac": tac,
    "calibration": calibration,
    "energy_score": lambda mean, covariance, target: energy_score(mean, covariance, target, num_samples=4),
}


@pytest.mark.parametrize("metric", PREDICTIVE_METRICS.values(), ids=PREDICTIVE_METRICS.keys())
@pytest.mark.parametrize(
    ("mean_shape", "covariance_shape", "target_shape", "message"),
    [
        ((5,), (5, 3, 3), (5, 3), "mean: expected shape (N, D) with N >= 1 and D >= 1, got (5,)"),
        ((0, 3), (0, 3, 3), (0, 3), "mean: expected shape (N, D) with N >= 1 and D >= 1, got (0, 3)"),
        ((5, 3), (5, 3), (5, 3), "covariance: expected shape (N, D, D) = (5, 3, 3), got (5, 3)"),
        ((5, 3), (4, 3, 3), (5, 3), "covariance: expected shape (N, D, D) = (5, 3, 3), got (4, 3, 3)"),
        ((5, 3), (5, 3, 3), (5, 4), "target: expected shape (N, D) = (5, 3), got (5, 4)"),
    ],
)
def test_shape_errors_name_the_argument(
    metric: MetricCall,
    mean_shape: tuple[int, ...],
    covariance_shape: tuple[int, ...],
    target_shape: tuple[int, ...],
    message: str,
) -> None:
    covariance = np.zeros(covariance_shape)
    if len(covariance_shape) == 3:
        covariance = covariance + np.eye(covariance_shape[-1])
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        metric(np.zeros(mean_shape), covariance, np.zeros(target_shape))


def test_mse_shape_error_names_target() -> None:
    with pytest.raises(ValueError, match=re.escape("target: expected shape (N, D) = (2, 3), got (3, 2)")):
        mse(np.zeros((2, 3)), np.zeros((3, 2)))


def test_truth_metric_shape_errors_name_the_argument() -> None:
    mean, covariance = np.zeros((4, 2)), np.broadcast_to(np.eye(2), (4, 2, 2))
    for metric in (kl_to_truth, wasserstein_to_truth):
        with pytest.raises(
            ValueError, match=re.escape("true_covariance: expected shape (N, D, D) = (4, 2, 2)")
        ):
            metric(mean, covariance[:3], mean, covariance)
        with pytest.raises(ValueError, match=re.escape("mean: expected shape (N, D) = (4, 2), got (4, 3)")):
            metric(mean, covariance, np.zeros((4, 3)), covariance)


def indefinite_batch() -> FloatArray:
    """Five 3x3 covariances of which samples 2 and 4 have a negative eigenvalue."""
    covariance = random_spd(np.random.default_rng(110), 5, 3)
    for index in (2, 4):
        covariance[index] = np.diag([1.0, -0.5, 2.0])
    return covariance


@pytest.mark.parametrize("metric", PREDICTIVE_METRICS.values(), ids=PREDICTIVE_METRICS.keys())
def test_non_positive_definite_covariance_names_the_first_sample(metric: MetricCall) -> None:
    message = "covariance: sample 2 is not positive definite (Cholesky factorisation failed)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        metric(np.zeros((5, 3)), indefinite_batch(), np.zeros((5, 3)))


@pytest.mark.parametrize("metric", [kl_to_truth, wasserstein_to_truth])
def test_truth_metrics_reject_non_positive_definite_covariances(
    metric: Callable[[FloatArray, FloatArray, FloatArray, FloatArray], float],
) -> None:
    mean, good = np.zeros((5, 3)), random_spd(np.random.default_rng(120), 5, 3)
    with pytest.raises(ValueError, match=re.escape("true_covariance: sample 2 is not positive definite")):
        metric(mean, indefinite_batch(), mean, good)
    with pytest.raises(ValueError, match="^" + re.escape("covariance: sample 2 is not positive definite")):
        metric(mean, good, mean, indefinite_batch())


def test_asymmetric_and_non_finite_inputs_are_rejected() -> None:
    mean, covariance, target = random_problem(130, 4, 3)
    covariance[1, 0, 2] += 0.5
    with pytest.raises(ValueError, match=r"^covariance: sample 1 is not symmetric"):
        tac(mean, covariance, target)
    target[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"^target: contains non-finite values$"):
        mse(mean, target)


def _mis_scaled_predictions(
    seed: int, rows: int, dim: int, truth_scale: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Random means and SPD covariances ``(rows, dim[, dim])``, and targets drawn from ``truth_scale · Σ``."""
    generator = np.random.default_rng(seed)
    mean = generator.normal(size=(rows, dim))
    factors = generator.normal(size=(rows, dim, dim))
    covariance = factors @ np.swapaxes(factors, -1, -2) + 0.5 * np.eye(dim)
    noise = generator.normal(size=(rows, dim))
    target = mean + np.einsum("nij,nj->ni", np.linalg.cholesky(truth_scale * covariance), noise)
    return mean, covariance, target


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_variance_calibration_is_the_nll_minimiser_found_by_a_scalar_search(dim: int) -> None:
    # the predictions are 7× over-confident
    mean, covariance, target = _mis_scaled_predictions(40 + dim, 300, dim, truth_scale=7.0)
    factor = variance_calibration(mean, covariance, target)
    search = scipy.optimize.minimize_scalar(
        lambda log_c: gaussian_nll(mean, np.exp(log_c) * covariance, target), bounds=(-5, 5), method="bounded"
    )
    assert factor == pytest.approx(float(np.exp(search.x)), rel=1e-4)
    assert gaussian_nll(mean, factor * covariance, target) <= gaussian_nll(mean, covariance, target)
    assert 5.0 < factor < 9.5


@pytest.mark.parametrize("dim", DIMENSIONS)
def test_calibrated_nll_is_the_nll_of_the_rescaled_covariances_and_ignores_their_scale(dim: int) -> None:
    mean, covariance, target = _mis_scaled_predictions(60 + dim, 200, dim, truth_scale=3.0)
    factor = variance_calibration(mean, covariance, target)
    naive = gaussian_nll(mean, factor * covariance, target)
    assert calibrated_gaussian_nll(mean, covariance, target) == pytest.approx(naive, rel=EXACT_RTOL)
    for scale in (1e-3, 0.5, 40.0):
        rescaled = calibrated_gaussian_nll(mean, scale * covariance, target)
        assert rescaled == pytest.approx(naive, rel=1e-9)
    assert calibrated_gaussian_nll(mean, covariance, target) <= gaussian_nll(mean, covariance, target)

"""Tests of the numpy ``covserve.gaussian`` against naive references.

Every closed form is checked against a per-sample reference built in this file from
``numpy.linalg.inv`` and explicit loops.
Statistical checks use fixed seeds and tolerances of several standard errors for the sample sizes used.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

import covserve.gaussian as np_gaussian
from covserve.training.metrics import conditional_residuals

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH = 7
EXACT_ATOL = 1e-10
"""Absolute tolerance between two float64 evaluations of the same closed form on O(1) inputs."""
Z_95 = 1.6448536269514722
"""Standard normal quantile at 0.95: the half-width, in standard deviations, of a central 90% interval."""

OBSERVED_SETS: list[tuple[int, list[int]]] = [
    (2, [0]),
    (2, [1]),
    (3, [1]),
    (3, [2, 0]),
    (4, [3]),
    (4, [0, 2]),
    (4, [3, 1, 0]),
    (5, [4, 1]),
    (5, [2, 0, 3]),
    (6, [5, 0, 3, 1]),
    (6, [1]),
    (6, [0, 1, 2, 3, 4]),
]


def _random_spd(rng: np.random.Generator, batch: int, dim: int) -> FloatArray:
    """Well-conditioned random SPD batch with O(1) entries and non-trivial correlations."""
    factor = rng.normal(size=(batch, dim, dim))
    scales = rng.uniform(0.5, 2.0, size=(batch, dim))
    covariance = factor @ np.swapaxes(factor, -1, -2) / dim + 0.3 * np.eye(dim)
    covariance = covariance * scales[:, :, None] * scales[:, None, :]
    result: FloatArray = 0.5 * (covariance + np.swapaxes(covariance, -1, -2))
    return result


def _problem(seed: int, batch: int, dim: int) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, dim)), _random_spd(rng, batch, dim)


def _naive_condition(
    mean: FloatArray, covariance: FloatArray, observed: Sequence[int], values: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per-sample reference through the joint precision ``P = Σ⁻¹``.

    ``y_u | y_o = v ~ N(μ_u − P_uu⁻¹ P_uo (v − μ_o), P_uu⁻¹)``, with the unobserved targets ascending.
    """
    dim = mean.shape[-1]
    free = [i for i in range(dim) if i not in observed]
    fixed = list(observed)
    means = []
    covariances = []
    for mu, sigma, value in zip(mean, covariance, values, strict=True):
        precision = np.linalg.inv(sigma)
        block_inverse = np.linalg.inv(precision[np.ix_(free, free)])
        shift = value - mu[fixed]
        means.append(mu[free] - block_inverse @ precision[np.ix_(free, fixed)] @ shift)
        covariances.append(block_inverse)
    return np.stack(means), np.stack(covariances)


# --------------------------------------------------------------------------------------------- condition


@pytest.mark.parametrize(("dim", "observed"), OBSERVED_SETS)
def test_condition_matches_naive_precision_reference(dim: int, observed: list[int]) -> None:
    mean, covariance = _problem(100 + dim, BATCH, dim)
    values = np.random.default_rng(200 + dim).normal(size=(BATCH, len(observed)))
    expected_mean, expected_covariance = _naive_condition(mean, covariance, observed, values)

    got_mean, got_covariance = np_gaussian.condition(mean, covariance, observed, values)

    free = dim - len(observed)
    assert got_mean.shape == (BATCH, free)
    assert got_covariance.shape == (BATCH, free, free)
    np.testing.assert_allclose(got_mean, expected_mean, rtol=0, atol=EXACT_ATOL)
    np.testing.assert_allclose(got_covariance, expected_covariance, rtol=0, atol=EXACT_ATOL)
    np.testing.assert_array_equal(got_covariance, np.swapaxes(got_covariance, -1, -2))


def test_condition_matches_explicit_block_inverse_hand_example() -> None:
    """A 3-D case worked by hand: Σ_uo Σ_oo⁻¹ with observed = [2, 0] in that (unsorted) order."""
    mean = np.array([[1.0, -2.0, 0.5]])
    covariance = np.array([[[4.0, 1.0, 2.0], [1.0, 3.0, -1.0], [2.0, -1.0, 5.0]]])
    values = np.array([[1.5, 3.0]])  # y_2 = 1.5, y_0 = 3.0
    # Σ_oo over (2, 0) = [[5, 2], [2, 4]], det 16, inverse [[4, -2], [-2, 5]] / 16; Σ_1o = [-1, 1].
    gain = np.array([-1.0, 1.0]) @ (np.array([[4.0, -2.0], [-2.0, 5.0]]) / 16.0)  # [-6/16, 7/16]
    shift = np.array([1.5 - 0.5, 3.0 - 1.0])
    expected_mean = -2.0 + gain @ shift  # -2 - 6/16 + 14/16 = -1.5
    expected_variance = 3.0 - gain @ np.array([-1.0, 1.0])  # 3 - 13/16 = 35/16
    assert expected_mean == -1.5
    assert expected_variance == 35.0 / 16.0

    got_mean, got_covariance = np_gaussian.condition(mean, covariance, [2, 0], values)
    np.testing.assert_allclose(got_mean, [[-1.5]], rtol=0, atol=1e-14)
    np.testing.assert_allclose(got_covariance, [[[35.0 / 16.0]]], rtol=0, atol=1e-14)


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 5, 6])
def test_condition_on_nothing_returns_input(dim: int) -> None:
    mean, covariance = _problem(300 + dim, BATCH, dim)
    values = np.empty((BATCH, 0))

    np_mean, np_covariance = np_gaussian.condition(mean, covariance, [], values)
    np.testing.assert_array_equal(np_mean, mean)
    np.testing.assert_array_equal(np_covariance, covariance)


@pytest.mark.parametrize("observed", [[2, 0], [3, 1, 2]])
def test_condition_matches_least_squares_regression_on_samples(observed: list[int]) -> None:
    """The conditional mean is the population regression of y_u on y_o; its covariance the residual one."""
    dim, num = 4, 200_000
    mean, covariance = _problem(400, 1, dim)
    rng = np.random.default_rng(401)
    samples = mean[0] + rng.standard_normal((num, dim)) @ np.linalg.cholesky(covariance[0]).T
    free = [i for i in range(dim) if i not in observed]

    design = np.column_stack([np.ones(num), samples[:, observed]])
    coefficients, *_ = np.linalg.lstsq(design, samples[:, free], rcond=None)
    residual = samples[:, free] - design @ coefficients
    residual_covariance = residual.T @ residual / (num - design.shape[1])

    values = rng.normal(size=(5, len(observed)))
    predicted = np.column_stack([np.ones(len(values)), values]) @ coefficients
    batch_mean = np.repeat(mean, len(values), axis=0)
    batch_covariance = np.repeat(covariance, len(values), axis=0)
    got_mean, got_covariance = np_gaussian.condition(batch_mean, batch_covariance, observed, values)
    scale = np.sqrt(np.diagonal(got_covariance[0]))
    # Regression coefficients have standard errors ~ 1/sqrt(num) ≈ 2e-3 relative; allow ~10 of them.
    np.testing.assert_allclose(got_mean, predicted, rtol=0, atol=0.03 * scale.max())
    np.testing.assert_allclose(got_covariance[0], residual_covariance, rtol=0.02, atol=0.01)


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 5, 6])
def test_condition_all_but_one_gives_tac_conditional_residual(dim: int) -> None:
    """``conditional_residuals[:, i] = y_i − E[y_i | y_−i]`` (target minus conditional mean)."""
    mean, covariance = _problem(500 + dim, BATCH, dim)
    target = np.random.default_rng(600 + dim).normal(size=(BATCH, dim))
    residuals = conditional_residuals(mean, covariance, target)
    assert residuals.shape == (BATCH, dim)

    for i in range(dim):
        others = [j for j in range(dim) if j != i][::-1]  # unsorted on purpose
        got_mean, _ = np_gaussian.condition(mean, covariance, others, target[:, others])
        assert got_mean.shape == (BATCH, 1)
        np.testing.assert_allclose(target[:, i] - got_mean[:, 0], residuals[:, i], rtol=0, atol=EXACT_ATOL)


@pytest.mark.parametrize(
    "observed",
    [[1, 1], [0, 2, 0], [3], [-1], [0, 7], [0, 1, 2], [2, 1, 0]],
    ids=["duplicate", "duplicate-3", "too-large", "negative", "out-of-range", "all", "all-unsorted"],
)
def test_condition_rejects_invalid_observed(observed: list[int]) -> None:
    dim = 3
    mean, covariance = _problem(700, 2, dim)
    values = np.zeros((2, len(observed)))
    with pytest.raises(ValueError, match="observed"):
        np_gaussian.condition(mean, covariance, observed, values)


# ------------------------------------------------------------------------------------ marginal_intervals


def test_marginal_intervals_ninety_percent_closed_form() -> None:
    mean, covariance = _problem(800, BATCH, 5)
    std = np.sqrt(np.diagonal(covariance, axis1=-2, axis2=-1))

    lower, upper = np_gaussian.marginal_intervals(mean, covariance, 0.9)

    assert lower.shape == upper.shape == mean.shape
    np.testing.assert_allclose(lower, mean - Z_95 * std, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(upper, mean + Z_95 * std, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.99])
def test_marginal_intervals_empirical_coverage(level: float) -> None:
    dim, num = 4, 100_000
    mean, covariance = _problem(820, 1, dim)
    rng = np.random.default_rng(821)
    samples = mean[0] + rng.standard_normal((num, dim)) @ np.linalg.cholesky(covariance[0]).T
    tolerance = 5.0 * np.sqrt(level * (1.0 - level) / num)

    lower, upper = np_gaussian.marginal_intervals(mean, covariance, level)
    coverage = np.mean((samples >= lower[0]) & (samples <= upper[0]), axis=0)
    assert coverage.shape == (dim,)
    np.testing.assert_allclose(coverage, level, rtol=0, atol=tolerance)


@pytest.mark.parametrize("level", [0.01, 0.5, 0.8, 0.95, 0.999])
def test_marginal_intervals_bracket_the_mean_and_widen_with_the_level(level: float) -> None:
    mean, covariance = _problem(810, BATCH, 3)
    lower, upper = np_gaussian.marginal_intervals(mean, covariance, level)
    assert np.all(lower < mean)
    assert np.all(upper > mean)
    np.testing.assert_allclose(mean - lower, upper - mean, rtol=1e-12)
    wider_lower, wider_upper = np_gaussian.marginal_intervals(mean, covariance, (1.0 + level) / 2.0)
    assert np.all(wider_lower < lower)
    assert np.all(wider_upper > upper)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_marginal_intervals_rejects_invalid_level(level: float) -> None:
    mean, covariance = _problem(830, 2, 3)
    with pytest.raises(ValueError, match="level"):
        np_gaussian.marginal_intervals(mean, covariance, level)


# ------------------------------------------------------------------------------------------- correlation


@pytest.mark.parametrize("dim", [1, 2, 3, 6])
def test_correlation_matches_naive_loop(dim: int) -> None:
    _, covariance = _problem(900 + dim, BATCH, dim)
    expected = np.empty_like(covariance)
    for b in range(BATCH):
        for i in range(dim):
            for j in range(dim):
                expected[b, i, j] = covariance[b, i, j] / np.sqrt(covariance[b, i, i] * covariance[b, j, j])
    original = covariance.copy()

    result = np_gaussian.correlation(covariance)

    np.testing.assert_array_equal(covariance, original)  # input not modified in place
    assert result.shape == (BATCH, dim, dim)
    np.testing.assert_allclose(result, expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(np.diagonal(result, axis1=-2, axis2=-1), np.ones((BATCH, dim)))
    assert np.all(np.abs(result) <= 1.0)


def test_correlation_of_scaled_identity_plus_rank_one() -> None:
    """``Σ = s² ((1 − ρ) I + ρ 1 1ᵀ)`` has correlation ρ off the diagonal, whatever the scale s."""
    rho, dim = 0.35, 4
    base = (1.0 - rho) * np.eye(dim) + rho * np.ones((dim, dim))
    covariance = np.stack([base * 7.3**2, base * 0.01**2])
    expected = np.broadcast_to(base, covariance.shape)
    np.testing.assert_allclose(np_gaussian.correlation(covariance), expected, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------- is_symmetric_positive_definite


def _spd(covariance: FloatArray) -> BoolArray:
    """The numpy implementation, with every warning turned into an error regardless of pytest config."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = np_gaussian.is_symmetric_positive_definite(covariance.copy())
    assert result.dtype == np.bool_
    return result


@pytest.mark.parametrize("dim", [1, 2, 3, 6])
def test_spd_accepts_random_spd_batches(dim: int) -> None:
    _, covariance = _problem(1000 + dim, 16, dim)
    result = _spd(covariance)
    assert result.shape == (16,)
    assert result.all()


def _invalid_cases(dim: int) -> dict[str, FloatArray]:
    _, spd = _problem(1100, 6, dim)
    indefinite = spd[0].copy()
    eigenvalues, vectors = np.linalg.eigh(indefinite)
    eigenvalues[0] = -0.5
    indefinite = (vectors * eigenvalues) @ vectors.T
    indefinite = 0.5 * (indefinite + indefinite.T)
    non_symmetric = spd[1].copy()
    non_symmetric[0, 2] += 0.05  # symmetric part is still PD: only the asymmetry fails it
    assert np.all(np.linalg.eigvalsh(0.5 * (non_symmetric + non_symmetric.T)) > 0)
    with_nan = spd[2].copy()
    with_nan[1, 1] = np.nan
    with_inf = spd[3].copy()
    with_inf[0, 0] = np.inf
    with_neg_inf = spd[4].copy()
    with_neg_inf[2, 1] = with_neg_inf[1, 2] = -np.inf
    nan_off_diagonal = spd[5].copy()
    nan_off_diagonal[0, 1] = nan_off_diagonal[1, 0] = np.nan
    return {
        "indefinite": indefinite,
        "non-symmetric": non_symmetric,
        "nan": with_nan,
        "inf": with_inf,
        "neg-inf": with_neg_inf,
        "nan-off-diagonal": nan_off_diagonal,
        "zero": np.zeros((dim, dim)),
    }


def test_spd_mixed_batch_is_elementwise_correct() -> None:
    dim = 3
    _, valid = _problem(1200, 4, dim)
    nearly_symmetric = valid[3].copy()
    nearly_symmetric[0, 1] *= 1.0 + 1e-9  # inside OUTPUT_SYMMETRY_RTOL
    invalid = _invalid_cases(dim)
    batch = np.stack([valid[0], *invalid.values(), valid[1], nearly_symmetric, valid[2]])
    expected = np.array([True] + [False] * len(invalid) + [True, True, True])

    np.testing.assert_array_equal(_spd(batch), expected)


@pytest.mark.parametrize(
    "case", ["indefinite", "non-symmetric", "nan", "inf", "neg-inf", "nan-off-diagonal", "zero"]
)
def test_spd_rejects_each_invalid_case_alone(case: str) -> None:
    matrix = _invalid_cases(3)[case]
    np.testing.assert_array_equal(_spd(matrix[None]), [False])


def test_spd_nested_batch_shape() -> None:
    _, valid = _problem(1300, 6, 2)
    batch = valid.reshape(2, 3, 2, 2).copy()
    batch[1, 2, 0, 0] = -1.0  # indefinite
    expected = np.ones((2, 3), dtype=bool)
    expected[1, 2] = False
    np.testing.assert_array_equal(_spd(batch), expected)


# ------------------------------------------------------------------------------------------------ imports


def test_service_gaussian_does_not_import_torch() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, covserve.gaussian; assert 'torch' not in sys.modules"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


def test_numpy_log_det_matches_slogdet_and_marks_the_failing_rows() -> None:
    generator = np.random.default_rng(21)
    factors = generator.normal(size=(6, 4, 4))
    covariance = factors @ np.swapaxes(factors, -1, -2) + 0.1 * np.eye(4)
    covariance[2] = -np.eye(4)  # negative definite
    covariance[4, 0, 0] = np.nan
    healthy, log_det = np_gaussian.log_det_if_positive_definite(covariance)
    assert healthy.tolist() == [True, True, False, True, False, True]
    assert np.isnan(log_det[~healthy]).all()
    sign, want = np.linalg.slogdet(covariance[healthy])
    assert (sign == 1).all()
    np.testing.assert_allclose(log_det[healthy], want, rtol=1e-12, atol=1e-12)

"""Tests of the synthetic generators against the TIC-TAC recipe (research notes, sections 6.2 and 6.4).

Statistical tolerances are set at about five standard errors for the sample sizes used, so the tests are
deterministic (fixed seeds) and would still pass for almost any other seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.stats import spearmanr

from covserve.training.synthetic import (
    NOISE_FLOOR,
    SinusoidAmplitude,
    SyntheticDataset,
    _nearest_correlation,
    multivariate,
    sinusoid,
)

LARGE_SAMPLES = 20_000
"""Standard error of a whitened-residual mean is ``1 / sqrt(20_000) = 0.0071``."""

MOMENT_TOLERANCE = 0.05
"""About seven standard errors of a whitened mean or covariance entry at ``LARGE_SAMPLES`` (the standard
error of a diagonal covariance entry is ``sqrt(2 / N) = 0.010``, of an off-diagonal one ``0.0071``)."""

VARIANCE_RELATIVE_TOLERANCE = 0.05
"""Relative standard error of a uniform sample variance is ``sqrt(0.8 / N) = 0.0063`` at ``LARGE_SAMPLES``
(excess kurtosis of a uniform is ``-1.2``), so five percent is about eight standard errors."""


@pytest.fixture(scope="module")
def square() -> SyntheticDataset:
    """TIC-TAC's own setting, ``in_dim == out_dim == 4``."""
    return multivariate(4, 4, LARGE_SAMPLES, seed=7)


def _whitened_residuals(data: SyntheticDataset) -> NDArray[np.float64]:
    cholesky = np.linalg.cholesky(data.covariance)
    residual = data.targets - data.mean
    whitened: NDArray[np.float64] = np.linalg.solve(cholesky, residual[:, :, None])[:, :, 0]
    return whitened


def _assert_spd(covariance: NDArray[np.float64]) -> None:
    np.testing.assert_allclose(covariance, np.swapaxes(covariance, -1, -2), rtol=0.0, atol=1e-12)
    np.linalg.cholesky(covariance)
    assert np.linalg.eigvalsh(covariance).min() > 0.0


@pytest.mark.parametrize(("in_dim", "out_dim"), [(4, 4), (3, 5), (6, 2), (1, 1), (1, 3)])
def test_multivariate_shapes_and_spd(in_dim: int, out_dim: int) -> None:
    data = multivariate(in_dim, out_dim, 500, seed=1)
    assert data.inputs.shape == (500, in_dim)
    assert data.targets.shape == (500, out_dim)
    assert data.mean.shape == (500, out_dim)
    assert data.covariance.shape == (500, out_dim, out_dim)
    for array in (data.inputs, data.targets, data.mean, data.covariance):
        assert array.dtype == np.float64
        assert np.isfinite(array).all()
    _assert_spd(data.covariance)


def test_multivariate_is_deterministic_by_seed() -> None:
    first, again, other = (multivariate(3, 5, 300, seed=seed) for seed in (11, 11, 12))
    for name in ("inputs", "targets", "mean", "covariance"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
        assert not np.allclose(getattr(first, name), getattr(other, name))


def test_inputs_are_uniform_with_variance_equal_to_scale(square: SyntheticDataset) -> None:
    scale = 4.0
    half_width = np.sqrt(3.0 * scale)
    low, high = square.inputs.min(axis=0), square.inputs.max(axis=0)
    centre = 0.5 * (low + high)
    # The centre is the input part of the joint mean m ~ U(-s, s); with N = 20_000 uniform draws the sample
    # range misses the true support by about 2 * half_width / N = 3.5e-4 at each end.
    assert np.all(np.abs(centre) <= scale)
    np.testing.assert_allclose(high - low, 2.0 * half_width, rtol=1e-3)
    assert np.all(square.inputs >= centre - half_width - 1e-3)
    assert np.all(square.inputs <= centre + half_width + 1e-3)
    np.testing.assert_allclose(square.inputs.var(axis=0), scale, rtol=VARIANCE_RELATIVE_TOLERANCE)
    # Uniform, not Gaussian: each decile of the support holds a tenth of the samples (s.e. 0.0021).
    fractions = (square.inputs - low) / (high - low)
    counts = np.stack([np.histogram(column, bins=10, range=(0.0, 1.0))[0] for column in fractions.T])
    np.testing.assert_allclose(counts / LARGE_SAMPLES, 0.1, atol=0.012)


def test_input_range_for_rectangular_dimensions() -> None:
    data = multivariate(6, 2, LARGE_SAMPLES, seed=3)
    scale = 2.0
    spread = data.inputs.max(axis=0) - data.inputs.min(axis=0)
    np.testing.assert_allclose(spread, 2.0 * np.sqrt(3.0 * scale), rtol=1e-3)
    np.testing.assert_allclose(data.inputs.var(axis=0), scale, rtol=VARIANCE_RELATIVE_TOLERANCE)


@pytest.mark.parametrize(("in_dim", "out_dim"), [(4, 4), (3, 5), (6, 2)])
def test_whitened_residuals_are_standard_normal(in_dim: int, out_dim: int) -> None:
    data = multivariate(in_dim, out_dim, LARGE_SAMPLES, seed=5)
    whitened = _whitened_residuals(data)
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=MOMENT_TOLERANCE)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(out_dim), atol=MOMENT_TOLERANCE)


def test_conditional_mean_is_affine_in_inputs(square: SyntheticDataset) -> None:
    design = np.column_stack([square.inputs, np.ones(LARGE_SAMPLES)])
    coefficients, *_ = np.linalg.lstsq(design, square.mean, rcond=None)
    np.testing.assert_allclose(design @ coefficients, square.mean, rtol=0.0, atol=1e-9)


@pytest.mark.parametrize(("in_dim", "out_dim"), [(4, 4), (3, 5), (6, 2)])
def test_covariance_is_heteroscedastic_on_the_diagonal_only(in_dim: int, out_dim: int) -> None:
    data = multivariate(in_dim, out_dim, 5_000, seed=9)
    off_diagonal = ~np.eye(out_dim, dtype=bool)
    constant = data.covariance[:, off_diagonal]
    np.testing.assert_allclose(constant, np.broadcast_to(constant[0], constant.shape), rtol=0.0, atol=1e-12)
    # Each variance gains a convex combination of sqrt|x_j - m_j| with |x_j - m_j| ~ U(0, sqrt(3 s)):
    # its standard deviation across samples is sqrt(sqrt(3 s) / 18) per input, 0.38 for s = 2 and 0.47
    # for s = 5 when the mixing concentrates on one input, less (but not below ~0.15) when it averages.
    trace = np.trace(data.covariance, axis1=1, axis2=2)
    assert trace.std() > 0.3
    assert trace.max() - trace.min() > 1.0
    variances = np.diagonal(data.covariance, axis1=1, axis2=2)
    assert np.all(variances.std(axis=0) > 0.1)


def test_square_noise_grows_with_distance_from_input_mean(square: SyntheticDataset) -> None:
    # With W = I, variance j depends on x only through |x_j - m_X,j|; estimate m_X,j as the input at which
    # that variance is smallest and check the variance is increasing in the distance from it.
    variances = np.diagonal(square.covariance, axis1=1, axis2=2)
    for j in range(4):
        centre = square.inputs[np.argmin(variances[:, j]), j]
        distance = np.abs(square.inputs[:, j] - centre)
        assert spearmanr(distance, variances[:, j]).statistic > 0.99
        increase = variances[:, j] - variances[:, j].min()
        # sqrt|x - m| - sqrt|x* - m| <= sqrt|x - x*| for the minimiser x*, with equality up to the
        # (tiny) distance |x* - m| between the minimiser and the true mean.
        assert np.all(increase <= np.sqrt(distance) + 1e-9)
        np.testing.assert_allclose(increase, np.sqrt(distance), atol=0.05)


def test_nearest_correlation_projects_indefinite_matrix() -> None:
    indefinite = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    assert np.linalg.eigvalsh(indefinite).min() < -0.5
    projected = _nearest_correlation(indefinite)
    np.testing.assert_array_equal(projected, projected.T)
    np.testing.assert_array_equal(np.diag(projected), 1.0)
    assert np.linalg.eigvalsh(projected).min() > 0.0
    np.linalg.cholesky(projected)
    assert np.abs(projected).max() <= 1.0
    # The signs of the correlations survive the projection.
    np.testing.assert_array_equal(np.sign(projected), np.sign(indefinite))


def test_nearest_correlation_keeps_positive_definite_matrix() -> None:
    correlation = np.array([[1.0, 0.5], [0.5, 1.0]])
    assert _nearest_correlation(correlation) is correlation


@settings(max_examples=25, deadline=None)
@given(
    in_dim=st.integers(min_value=1, max_value=8),
    out_dim=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_multivariate_is_valid_for_any_dimensions(in_dim: int, out_dim: int, seed: int) -> None:
    data = multivariate(in_dim, out_dim, 64, seed=seed)
    assert data.targets.shape == (64, out_dim)
    assert np.isfinite(data.targets).all()
    _assert_spd(data.covariance)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"in_dim": 0, "out_dim": 2, "samples": 10}, "in_dim"),
        ({"in_dim": 2, "out_dim": -1, "samples": 10}, "out_dim"),
        ({"in_dim": 2, "out_dim": 2, "samples": 1}, "samples"),
        ({"in_dim": 2.0, "out_dim": 2, "samples": 10}, "in_dim"),
        ({"in_dim": 2, "out_dim": True, "samples": 10}, "out_dim"),
        ({"in_dim": 2, "out_dim": 2, "samples": "10"}, "samples"),
    ],
)
def test_multivariate_rejects_invalid_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        multivariate(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amplitude", "envelope"),
    [
        (SinusoidAmplitude.VARYING, np.abs),
        (SinusoidAmplitude.INVERTED, lambda x: 5.0 - np.abs(x)),
        (SinusoidAmplitude.CONSTANT, lambda x: np.full_like(x, 5.0)),
    ],
)
def test_sinusoid_mean_and_noise(
    amplitude: SinusoidAmplitude, envelope: Callable[[NDArray[np.float64]], NDArray[np.float64]]
) -> None:
    data = sinusoid(LARGE_SAMPLES, amplitude, seed=2)
    assert data.inputs.shape == data.targets.shape == data.mean.shape == (LARGE_SAMPLES, 1)
    assert data.covariance.shape == (LARGE_SAMPLES, 1, 1)
    assert data.inputs.min() >= -5.0
    assert data.inputs.max() <= 5.0
    np.testing.assert_allclose(data.mean, envelope(data.inputs) * np.sin(2.0 * np.pi * data.inputs))
    std = np.abs(data.inputs) + NOISE_FLOOR
    np.testing.assert_allclose(np.sqrt(data.covariance[:, :, 0]), std, rtol=1e-14)
    standardised = (data.targets - data.mean) / std
    assert abs(standardised.mean()) < MOMENT_TOLERANCE
    assert abs(standardised.std() - 1.0) < MOMENT_TOLERANCE
    # Heteroscedastic: residuals far from 0 are much larger than residuals near 0.
    residual = np.abs(data.targets - data.mean)[:, 0]
    far, near = np.abs(data.inputs[:, 0]) > 4.0, np.abs(data.inputs[:, 0]) < 1.0
    assert residual[far].mean() > 5.0 * residual[near].mean()


def test_sinusoid_accepts_string_amplitude_and_is_deterministic() -> None:
    by_enum = sinusoid(1_000, SinusoidAmplitude.INVERTED, seed=4)
    by_string = sinusoid(1_000, "inverted", seed=4)
    other_seed = sinusoid(1_000, "inverted", seed=5)
    for name in ("inputs", "targets", "mean", "covariance"):
        np.testing.assert_array_equal(getattr(by_enum, name), getattr(by_string, name))
        assert not np.allclose(getattr(by_enum, name), getattr(other_seed, name))


def test_sinusoid_default_size() -> None:
    assert sinusoid().inputs.shape == (50_000, 1)


def test_sinusoid_rejects_invalid_amplitude() -> None:
    with pytest.raises(ValueError, match="'varying', 'inverted', 'constant'") as error:
        sinusoid(100, "sine")
    assert "'sine'" in str(error.value)


@pytest.mark.parametrize("samples", [1, 0, 2.5])
def test_sinusoid_rejects_invalid_samples(samples: object) -> None:
    with pytest.raises(ValueError, match="samples"):
        sinusoid(samples)  # type: ignore[arg-type]

"""Synthetic heteroscedastic regression data with known conditional mean and full covariance.

Both generators reproduce the TIC-TAC code (Shukla, Salzmann and Alahi, "TIC-TAC: A Framework for Improved
Covariance Estimation in Deep Heteroscedastic Regression", ICML 2024, ``vita-epfl/TIC-TAC``), which ToSS
(Shukla et al., "Towards Self-Supervised Covariance Estimation in Deep Heteroscedastic Regression",
ICLR 2025) re-uses for its synthetic experiments:

* :func:`multivariate` follows ``Multivariate/sampler.py`` (research notes, section 6.2): a random joint
  Gaussian over ``(Y, X)``, inputs drawn from a Gaussian copula with uniform marginals, the Gaussian
  conditional mean and Schur-complement covariance, plus heteroscedastic noise that grows with
  ``sqrt|x - m_X|``.
* :func:`sinusoid` follows the univariate generator (research notes, section 6.4): ``x ~ U(-5, 5)`` and
  ``y = a(x) sin(2 pi x)`` plus Gaussian noise of standard deviation ``|x| + 1e-5``.

Every dataset carries its ground truth (the conditional mean and covariance of each sample), so metrics
such as the 2-Wasserstein distance or the KL divergence to the true distribution can be computed exactly.
All randomness comes from one ``numpy.random.default_rng(seed)``, so a seed fixes the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

__all__ = [
    "COPULA_EIGENVALUE_FLOOR",
    "CORRELATION_OFFSET_SCALE",
    "NOISE_FLOOR",
    "SINUSOID_AMPLITUDE",
    "SINUSOID_HALF_WIDTH",
    "SinusoidAmplitude",
    "SyntheticDataset",
    "multivariate",
    "sinusoid",
]

CORRELATION_OFFSET_SCALE: Final = 2.0
"""Standard deviation of the offset shared by every entry of one row of the random factor ``A``.

Row ``i`` is ``a_i = randn(n) + 2 * randn(1)`` (TIC-TAC's ``get_correlation``); the shared offset makes the
normalised ``A Aᵀ`` strongly, mostly positively, correlated rather than close to the identity."""

COPULA_EIGENVALUE_FLOOR: Final = 1e-8
"""Smallest eigenvalue allowed in the Gaussian-copula correlation matrix ``2 sin(pi rho / 6)``.

The element-wise sine map does not preserve positive semi-definiteness: for the strongly correlated
matrices above it occasionally yields a slightly indefinite matrix (two draws in 1,500 when we sampled
input blocks of 2 to 32 dimensions; smallest eigenvalue about -5e-3). Such a matrix is projected onto a
nearby correlation matrix by raising its eigenvalues to this floor and rescaling it back to a unit
diagonal, which keeps it positive definite so that it has a Cholesky factor."""

NOISE_FLOOR: Final = 1e-5
"""Added to ``|x|`` in the noise standard deviation of :func:`sinusoid`, so the noise never vanishes
(TIC-TAC's univariate generator uses the same ``1e-5``)."""

SINUSOID_HALF_WIDTH: Final = 5.0
"""Inputs of :func:`sinusoid` are uniform on ``[-5, 5]``."""

SINUSOID_AMPLITUDE: Final = 5.0
"""Amplitude of the ``constant`` sinusoid, and the peak amplitude of the other two."""

_MIN_SAMPLES: Final = 2
"""A dataset needs at least two samples to have a sample covariance."""

_UNIFORM_VARIANCE_TO_HALF_WIDTH: Final = 3.0
"""A uniform variable of variance ``v`` spans ``mean ± sqrt(3 v)``."""


@dataclass(frozen=True)
class SyntheticDataset:
    """Samples from a heteroscedastic Gaussian regression model, with the true model attached.

    Attributes
    ----------
    inputs : NDArray[np.float64], shape (N, M)
        Inputs ``x_i``.
    targets : NDArray[np.float64], shape (N, D)
        Targets ``y_i ~ N(mean[i], covariance[i])``.
    mean : NDArray[np.float64], shape (N, D)
        True conditional mean ``mu(x_i)``.
    covariance : NDArray[np.float64], shape (N, D, D)
        True conditional covariance ``Sigma(x_i)``, symmetric positive definite.
    """

    inputs: NDArray[np.float64]
    targets: NDArray[np.float64]
    mean: NDArray[np.float64]
    covariance: NDArray[np.float64]


class SinusoidAmplitude(str, Enum):
    """Amplitude ``a(x)`` of the sinusoid ``a(x) sin(2 pi x)``, on ``x`` in ``[-5, 5]``."""

    VARYING = "varying"
    """``a(x) = |x|``: the amplitude grows with the noise."""
    INVERTED = "inverted"
    """``a(x) = 5 - |x|``: the amplitude shrinks as the noise grows."""
    CONSTANT = "constant"
    """``a(x) = 5``."""


def _check_int(name: str, value: int, minimum: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _random_correlation(rng: np.random.Generator, size: int) -> NDArray[np.float64]:
    """Random dense correlation matrix, TIC-TAC's ``get_correlation``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    size : int
        Matrix size ``n``.

    Returns
    -------
    NDArray[np.float64], shape (n, n)
        ``D^{-1/2} A Aᵀ D^{-1/2}`` with ``D = diag(A Aᵀ)`` and rows ``a_i = randn(n) + 2 randn(1)``.
    """
    factor = rng.standard_normal((size, size)) + CORRELATION_OFFSET_SCALE * rng.standard_normal((size, 1))
    return _unit_diagonal(factor @ factor.T)


def _unit_diagonal(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rescale a symmetric matrix with a positive diagonal to unit diagonal, exactly symmetric.

    Parameters
    ----------
    matrix : NDArray[np.float64], shape (n, n)

    Returns
    -------
    NDArray[np.float64], shape (n, n)
        ``D^{-1/2} matrix D^{-1/2}`` with ``D = diag(matrix)``; its diagonal is set to exactly one.
    """
    inv_std = 1.0 / np.sqrt(np.diag(matrix))
    scaled = matrix * np.outer(inv_std, inv_std)
    scaled = 0.5 * (scaled + scaled.T)
    np.fill_diagonal(scaled, 1.0)
    return scaled


def _nearest_correlation(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Project a symmetric unit-diagonal matrix onto the positive definite correlation matrices.

    A matrix whose smallest eigenvalue is at least :data:`COPULA_EIGENVALUE_FLOOR` is returned unchanged.
    Otherwise its eigenvalues are clipped from below at the floor and the result is rescaled to a unit
    diagonal. This is a one-step approximation of the nearest correlation matrix (not Higham's iterative
    solution); it changes the matrix only as much as its negative eigenvalues demand.

    Parameters
    ----------
    matrix : NDArray[np.float64], shape (n, n)
        Symmetric, unit diagonal, possibly indefinite.

    Returns
    -------
    NDArray[np.float64], shape (n, n)
        Symmetric positive definite with unit diagonal.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    if eigenvalues[0] >= COPULA_EIGENVALUE_FLOOR:
        return matrix
    clipped = np.maximum(eigenvalues, COPULA_EIGENVALUE_FLOOR)
    return _unit_diagonal((eigenvectors * clipped) @ eigenvectors.T)


def _noise_mixing(rng: np.random.Generator, in_dim: int, out_dim: int) -> NDArray[np.float64]:
    """Matrix ``W`` that maps the per-input noise scales ``sqrt|x - m_X|`` to the output noise variances.

    TIC-TAC has ``in_dim == out_dim`` and adds ``sqrt|x_j - m_X,j|`` to output variance ``j``: ``W = I``,
    and no random numbers are drawn. Otherwise ``W`` is a fixed random mixing matrix with entries
    ``U(0, 1)`` and rows summing to one, so every output variance is a convex combination of the input
    noise scales and stays on the same scale as in TIC-TAC.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (used only when the dimensions differ).
    in_dim, out_dim : int
        Input dimension ``M`` and output dimension ``D``.

    Returns
    -------
    NDArray[np.float64], shape (D, M)
        Non-negative, rows summing to one.
    """
    if in_dim == out_dim:
        return np.eye(out_dim)
    weights = rng.uniform(0.0, 1.0, size=(out_dim, in_dim))
    normalised: NDArray[np.float64] = weights / weights.sum(axis=1, keepdims=True)
    return normalised


def _copula_uniforms(
    rng: np.random.Generator, correlation: NDArray[np.float64], samples: int
) -> NDArray[np.float64]:
    """Correlated ``U(0, 1)`` samples from a Gaussian copula.

    Gaussians with correlation ``2 sin(pi rho / 6)`` are mapped through the normal CDF; the resulting
    uniforms then have Spearman rank correlation ``rho``, which approximates Pearson correlation ``rho`` for
    uniform marginals.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    correlation : NDArray[np.float64], shape (M, M)
        Target correlation ``rho`` of the uniforms.
    samples : int
        Number of samples ``N``.

    Returns
    -------
    NDArray[np.float64], shape (N, M)
        Samples in ``[0, 1]``.
    """
    gaussian_correlation = _nearest_correlation(2.0 * np.sin(np.pi * correlation / 6.0))
    cholesky = np.linalg.cholesky(gaussian_correlation)
    gaussians = rng.standard_normal((samples, correlation.shape[0])) @ cholesky.T
    uniforms: NDArray[np.float64] = norm.cdf(gaussians)
    return uniforms


def multivariate(in_dim: int, out_dim: int, samples: int, seed: int = 0) -> SyntheticDataset:
    """Draw the TIC-TAC multivariate heteroscedastic dataset.

    With scale ``s = out_dim`` (TIC-TAC uses ``in_dim == out_dim == d``, so ``s = d``):

    1. Joint mean ``m ~ U(-s, s)`` over ``(Y, X)`` (``Y`` first) and joint covariance ``s C`` with ``C`` a
       random correlation matrix of size ``out_dim + in_dim`` (rows ``randn + 2 randn(1)``, normalised).
    2. Homoscedastic conditional covariance ``Sigma_{Y|X} = S_YY - S_YX S_XX^{-1} S_XY``.
    3. Inputs from a Gaussian copula with the correlation of ``C``'s ``X`` block, rescaled to uniforms
       of mean ``m_X`` and variance ``s``, i.e. on ``[m_X - sqrt(3 s), m_X + sqrt(3 s)]``. The copula
       correlation ``2 sin(pi rho / 6)`` is projected to a positive definite correlation matrix when the
       sine map makes it indefinite (see :data:`COPULA_EIGENVALUE_FLOOR`).
    4. Conditional mean ``mu(x) = m_Y + S_YX S_XX^{-1} (x - m_X)``, affine in ``x``.
    5. Heteroscedastic noise ``Sigma_Z(x) = C_Z + diag(W sqrt|x - m_X|)`` with ``C_Z`` a second random
       correlation matrix of size ``out_dim``. ``W`` is the identity when ``in_dim == out_dim`` (exactly
       TIC-TAC); otherwise it is a fixed random non-negative ``(out_dim, in_dim)`` matrix with rows summing
       to one, drawn from the seed. (TIC-TAC itself slices the first ``out_dim`` inputs, which fails for
       ``in_dim < out_dim``.)
    6. Targets ``y ~ N(mu(x), Sigma(x))`` with ``Sigma(x) = Sigma_{Y|X} + Sigma_Z(x)``.

    ``Sigma(x)`` is positive definite for every ``x``: ``Sigma_{Y|X}`` is positive semi-definite, ``C_Z``
    positive definite and the diagonal term non-negative.

    Parameters
    ----------
    in_dim : int
        Input dimension ``M >= 1``.
    out_dim : int
        Target dimension ``D >= 1``; also the scale ``s``.
    samples : int
        Number of samples ``N >= 2`` (TIC-TAC uses ``1000 d``).
    seed : int, default 0
        Seed of ``numpy.random.default_rng``; the same seed gives the same dataset.

    Returns
    -------
    SyntheticDataset
        ``inputs`` (N, M), ``targets`` (N, D), ``mean`` (N, D) and ``covariance`` (N, D, D).

    Raises
    ------
    ValueError
        If ``in_dim`` or ``out_dim`` is not a positive integer or ``samples`` is not an integer ``>= 2``.
    """
    _check_int("in_dim", in_dim, 1)
    _check_int("out_dim", out_dim, 1)
    _check_int("samples", samples, _MIN_SAMPLES)
    rng = np.random.default_rng(seed)
    scale = float(out_dim)

    joint_mean = rng.uniform(-scale, scale, size=out_dim + in_dim)
    joint_correlation = _random_correlation(rng, out_dim + in_dim)
    noise_correlation = _random_correlation(rng, out_dim)
    mixing = _noise_mixing(rng, in_dim, out_dim)

    mean_y, mean_x = joint_mean[:out_dim], joint_mean[out_dim:]
    joint_covariance = scale * joint_correlation
    cov_yy = joint_covariance[:out_dim, :out_dim]
    cov_xy = joint_covariance[out_dim:, :out_dim]
    cov_xx = joint_covariance[out_dim:, out_dim:]
    regression = np.linalg.solve(cov_xx, cov_xy).T
    conditional_covariance = cov_yy - regression @ cov_xy
    conditional_covariance = 0.5 * (conditional_covariance + conditional_covariance.T)

    uniforms = _copula_uniforms(rng, joint_correlation[out_dim:, out_dim:], samples)
    half_width = np.sqrt(_UNIFORM_VARIANCE_TO_HALF_WIDTH * scale)
    inputs = mean_x + half_width * (2.0 * uniforms - 1.0)

    centred = inputs - mean_x
    mean = mean_y + centred @ regression.T
    noise_variance = np.sqrt(np.abs(centred)) @ mixing.T
    covariance = conditional_covariance + noise_correlation + noise_variance[:, :, None] * np.eye(out_dim)

    cholesky = np.linalg.cholesky(covariance)
    innovations = rng.standard_normal((samples, out_dim))
    targets = mean + np.einsum("nij,nj->ni", cholesky, innovations)
    return SyntheticDataset(inputs=inputs, targets=targets, mean=mean, covariance=covariance)


def _parse_amplitude(amplitude: SinusoidAmplitude | str) -> SinusoidAmplitude:
    """Convert an amplitude name to :class:`SinusoidAmplitude`, with an error listing the valid names."""
    try:
        return SinusoidAmplitude(amplitude)
    except ValueError:
        valid = ", ".join(repr(member.value) for member in SinusoidAmplitude)
        raise ValueError(f"amplitude must be one of {valid}, got {amplitude!r}") from None


def sinusoid(
    samples: int = 50_000, amplitude: SinusoidAmplitude | str = SinusoidAmplitude.VARYING, seed: int = 0
) -> SyntheticDataset:
    """Draw the univariate heteroscedastic sinusoid of TIC-TAC and ToSS (Figure 10).

    ``x ~ U(-5, 5)`` and ``y = a(x) sin(2 pi x) + (|x| + NOISE_FLOOR) eps`` with ``eps ~ N(0, 1)``, where
    ``a(x)`` is ``|x|`` (varying), ``5 - |x|`` (inverted) or ``5`` (constant).

    Parameters
    ----------
    samples : int, default 50_000
        Number of samples ``N >= 2``.
    amplitude : SinusoidAmplitude or str, default SinusoidAmplitude.VARYING
        Amplitude profile, as the enum or its value (``"varying"``, ``"inverted"``, ``"constant"``).
    seed : int, default 0
        Seed of ``numpy.random.default_rng``; the same seed gives the same dataset.

    Returns
    -------
    SyntheticDataset
        ``inputs`` (N, 1), ``targets`` (N, 1), ``mean`` (N, 1) ``a(x) sin(2 pi x)`` and ``covariance``
        (N, 1, 1) ``(|x| + NOISE_FLOOR)^2``.

    Raises
    ------
    ValueError
        If ``samples`` is not an integer ``>= 2`` or ``amplitude`` is not a valid amplitude name.
    """
    _check_int("samples", samples, _MIN_SAMPLES)
    profile = _parse_amplitude(amplitude)
    rng = np.random.default_rng(seed)

    inputs = rng.uniform(-SINUSOID_HALF_WIDTH, SINUSOID_HALF_WIDTH, size=(samples, 1))
    distance = np.abs(inputs)
    if profile is SinusoidAmplitude.VARYING:
        envelope = distance
    elif profile is SinusoidAmplitude.INVERTED:
        envelope = SINUSOID_AMPLITUDE - distance
    else:
        envelope = np.full_like(inputs, SINUSOID_AMPLITUDE)
    mean = envelope * np.sin(2.0 * np.pi * inputs)
    std = distance + NOISE_FLOOR
    targets = mean + std * rng.standard_normal((samples, 1))
    return SyntheticDataset(inputs=inputs, targets=targets, mean=mean, covariance=(std**2)[:, :, None])

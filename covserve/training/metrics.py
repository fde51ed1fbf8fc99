"""Evaluation metrics for Gaussian predictions with input-dependent full covariance.

Every function is pure NumPy/SciPy and works in float64: inputs (float32 included) are cast to
float64 before any arithmetic. Shapes follow one convention throughout:

* ``mean`` and ``target``: (N, D), one row per sample, D target dimensions;
* ``covariance``: (N, D, D), one symmetric positive-definite matrix per sample.

Covariances are validated once per call: finite, symmetric up to a relative tolerance (then
symmetrised exactly) and positive definite (their Cholesky factor must exist). A failure raises
``ValueError`` naming the argument and, where it applies, the first failing sample index.

Linear systems go through the Cholesky factor ``L`` (``S = L L^T``); no covariance is inverted
explicitly except in ``tac``, whose definition needs the diagonal of the precision matrix, which is
formed from the inverse of the factor. The triangular systems are solved with NumPy's batched
LAPACK solver applied to ``L``: ``scipy.linalg.solve_triangular`` batches through a Python loop over
samples, which the vectorised metrics here avoid.

Units: ``tac`` and ``energy_score`` are in target units; ``mse`` and ``wasserstein_to_truth`` in
squared target units; ``gaussian_nll`` and ``kl_to_truth`` in nats; ``mahalanobis_squared`` and
``calibration`` are dimensionless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from covserve.training.numerics import FLOAT32_SYMMETRY_RTOL

__all__ = [
    "DEFAULT_ENERGY_SAMPLES",
    "DEFAULT_LEVELS",
    "Calibration",
    "calibrated_gaussian_nll",
    "calibration",
    "compute_metrics",
    "conditional_residuals",
    "energy_score",
    "gaussian_nll",
    "kl_to_truth",
    "mahalanobis_squared",
    "mse",
    "sample_gaussian",
    "tac",
    "variance_calibration",
    "wasserstein_to_truth",
]

FloatArray = npt.NDArray[np.float64]

DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
"""Nominal coverage levels of the central Mahalanobis ellipsoids checked by ``calibration``."""

DEFAULT_ENERGY_SAMPLES = 256
"""Monte-Carlo ensemble size used by ``energy_score``."""

LOG_2PI = float(np.log(2.0 * np.pi))
"""log(2 pi), the per-dimension normalising constant of the Gaussian log-density."""

ENERGY_CHUNK_ELEMENTS = 1 << 22
"""Float64 elements (32 MiB) allowed for one chunk of pairwise ensemble differences."""


@dataclass(frozen=True, eq=False)
class Calibration:
    """Coverage of the central Mahalanobis ellipsoids of the predicted Gaussians.

    Instances compare by identity (``eq=False``): element-wise array equality has no single truth value.

    Attributes
    ----------
    levels : ndarray, shape (L,)
        Nominal probability mass of each ellipsoid, in (0, 1).
    coverage : ndarray, shape (L,)
        Fraction of samples whose target falls inside the ellipsoid of each level.
    error : float
        Mean absolute calibration error, mean over levels of ``|coverage - level|`` (a probability).
    """

    levels: FloatArray
    coverage: FloatArray
    error: float


def _as_float64(value: npt.ArrayLike, name: str) -> FloatArray:
    array = np.array(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains non-finite values")
    return array


def _as_rows(value: npt.ArrayLike, name: str) -> FloatArray:
    """Cast the argument that fixes N and D; it must have shape (N, D) with N, D >= 1."""
    array = _as_float64(value, name)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name}: expected shape (N, D) with N >= 1 and D >= 1, got {array.shape}")
    return array


def _as_rows_like(value: npt.ArrayLike, name: str, shape: tuple[int, ...]) -> FloatArray:
    array = _as_float64(value, name)
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape (N, D) = {shape}, got {array.shape}")
    return array


def _as_covariance(value: npt.ArrayLike, name: str, num: int, dim: int) -> FloatArray:
    """Cast, shape-check and symmetry-check a batch of covariances; return its exact symmetric part."""
    array = _as_float64(value, name)
    expected = (num, dim, dim)
    if array.shape != expected:
        raise ValueError(f"{name}: expected shape (N, D, D) = {expected}, got {array.shape}")
    transposed = np.swapaxes(array, -1, -2)
    asymmetry = np.max(np.abs(array - transposed), axis=(-2, -1))
    scale = np.max(np.abs(array), axis=(-2, -1))
    failing = np.flatnonzero(asymmetry > FLOAT32_SYMMETRY_RTOL * scale)
    if failing.size:
        index = int(failing[0])
        raise ValueError(
            f"{name}: sample {index} is not symmetric "
            f"(max |S - S^T| = {asymmetry[index]:.3g} > {FLOAT32_SYMMETRY_RTOL:g} * max |S| = "
            f"{scale[index]:.3g})"
        )
    symmetric: FloatArray = 0.5 * (array + transposed)
    return symmetric


def _cholesky(covariance: FloatArray, name: str) -> FloatArray:
    """Lower Cholesky factors of a (N, D, D) batch; ValueError names the first non-PD sample."""
    try:
        factor = np.asarray(np.linalg.cholesky(covariance), dtype=np.float64)
    except np.linalg.LinAlgError:
        for index, matrix in enumerate(covariance):
            try:
                np.linalg.cholesky(matrix)
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"{name}: sample {index} is not positive definite (Cholesky factorisation failed)"
                ) from None
        raise
    return factor


def _solve_lower(factor: FloatArray, rhs: FloatArray) -> FloatArray:
    """Solve ``L x = b`` for a batch: factor (N, D, D), rhs (N, D) or (N, D, K)."""
    if rhs.ndim == factor.ndim - 1:
        return np.asarray(np.linalg.solve(factor, rhs[..., None])[..., 0], dtype=np.float64)
    return np.asarray(np.linalg.solve(factor, rhs), dtype=np.float64)


def _log_det(factor: FloatArray) -> FloatArray:
    """log det S = 2 sum_i log L_ii, shape (N,)."""
    diagonal = np.diagonal(factor, axis1=-2, axis2=-1)
    log_det: FloatArray = 2.0 * np.sum(np.log(diagonal), axis=-1)
    return log_det


def _prepare(
    mean: npt.ArrayLike, covariance: npt.ArrayLike, target: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Validate (mean, covariance, target); return the residual y - mu, the factor L and mu."""
    mu = _as_rows(mean, "mean")
    num, dim = mu.shape
    sigma = _as_covariance(covariance, "covariance", num, dim)
    y = _as_rows_like(target, "target", mu.shape)
    return y - mu, _cholesky(sigma, "covariance"), mu


def mse(mean: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Mean squared error per dimension.

    ``MSE = (1 / (N D)) sum_n sum_d (y_nd - mu_nd)^2``, the per-dimension average reported by the
    ToSS and TIC-TAC tables.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Predicted means.
    target : array_like, shape (N, D)
        Observed targets.

    Returns
    -------
    float
        Mean squared error, in squared target units.
    """
    mu = _as_rows(mean, "mean")
    y = _as_rows_like(target, "target", mu.shape)
    return float(np.mean((y - mu) ** 2))


def mahalanobis_squared(mean: npt.ArrayLike, covariance: npt.ArrayLike, target: npt.ArrayLike) -> FloatArray:
    """Squared Mahalanobis distance of each target from its predicted Gaussian.

    ``m_n = r_n^T S_n^-1 r_n = ||L_n^-1 r_n||^2`` with ``r_n = y_n - mu_n`` and ``S_n = L_n L_n^T``;
    computed by a triangular solve against the Cholesky factor.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted symmetric positive-definite covariances.
    target : array_like, shape (N, D)
        Observed targets.

    Returns
    -------
    ndarray, shape (N,)
        Squared distances (dimensionless); chi-squared with D degrees of freedom when the targets
        are drawn from the predicted Gaussians.
    """
    residual, factor, _ = _prepare(mean, covariance, target)
    whitened = _solve_lower(factor, residual)
    distances: FloatArray = np.sum(whitened**2, axis=-1)
    return distances


def variance_calibration(mean: npt.ArrayLike, covariance: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """The factor ``c`` whose ``c · Σ`` minimises the mean NLL of the targets: ``c = mean(m_n) / D``.

    With ``m_n`` the squared Mahalanobis distances (:func:`mahalanobis_squared`), the mean NLL of ``c Σ``
    is ``½ (D log c + mean(m_n) / c) + const``, minimal at ``c = mean(m_n) / D``. ``c > 1`` means the
    covariances were over-confident; the factor is dimensionless.
    """
    distances = mahalanobis_squared(mean, covariance, target)
    return float(np.mean(distances) / np.shape(target)[-1])


def calibrated_gaussian_nll(mean: npt.ArrayLike, covariance: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Mean NLL of the targets under ``c · Σ`` with the NLL-optimal ``c`` of :func:`variance_calibration`.

    Scale-free: it scores the means and the covariances' shapes, not their overall scale, so a model whose
    covariances are right up to one factor (what post-training calibration fixes) is not penalised for it.
    Closed form: ``gaussian_nll + ½ D (log c + 1 − c)``, since the mean NLL of ``c Σ`` is the mean NLL of
    ``Σ`` plus ``½ D log c + ½ mean(m_n) (1/c − 1)`` and ``mean(m_n) = D c``. Shapes as for
    :func:`gaussian_nll`.
    """
    factor = variance_calibration(mean, covariance, target)
    dim: int = np.shape(target)[-1]
    return gaussian_nll(mean, covariance, target) + 0.5 * dim * (math.log(factor) + 1.0 - factor)


def gaussian_nll(mean: npt.ArrayLike, covariance: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Negative log-likelihood of the targets under the predicted Gaussians, averaged over samples.

    ``NLL = (1 / N) sum_n 0.5 (D log(2 pi) + log det S_n + r_n^T S_n^-1 r_n)`` with
    ``r_n = y_n - mu_n``. The log-determinant is ``2 sum_i log L_ii`` and the quadratic form is
    ``||L^-1 r||^2``, both from the Cholesky factor ``S = L L^T``; no inverse is formed.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted symmetric positive-definite covariances.
    target : array_like, shape (N, D)
        Observed targets.

    Returns
    -------
    float
        Mean NLL per sample (summed over the D dimensions), in nats.
    """
    residual, factor, _ = _prepare(mean, covariance, target)
    dim = residual.shape[-1]
    quadratic = np.sum(_solve_lower(factor, residual) ** 2, axis=-1)
    return float(np.mean(0.5 * (dim * LOG_2PI + _log_det(factor) + quadratic)))


def conditional_residuals(
    mean: npt.ArrayLike, covariance: npt.ArrayLike, target: npt.ArrayLike
) -> FloatArray:
    """Residual of each target coordinate given the true values of all the other coordinates.

    For sample n and dimension i the Gaussian conditional mean of y_i given y_-i is
    ``mu_i + S_{i,-i} S_{-i,-i}^-1 (y_-i - mu_-i)`` and the residual ``y_i`` minus that mean equals
    ``(P r)_i / P_ii`` with precision ``P = S^-1`` and ``r = y - mu``. ``P`` is formed from the
    Cholesky factor as ``L^-T L^-1``, for all samples and dimensions at once. For D = 1 the residual
    is ``r``.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted symmetric positive-definite covariances.
    target : array_like, shape (N, D)
        Observed targets.

    Returns
    -------
    ndarray, shape (N, D)
        Signed conditional residuals, in target units.
    """
    residual, factor, _ = _prepare(mean, covariance, target)
    num, dim = residual.shape
    identity = np.broadcast_to(np.eye(dim), (num, dim, dim))
    factor_inverse = _solve_lower(factor, identity)
    precision = np.swapaxes(factor_inverse, -1, -2) @ factor_inverse
    precision_residual = (precision @ residual[..., None])[..., 0]
    result: FloatArray = precision_residual / np.diagonal(precision, axis1=-2, axis2=-1)
    return result


def tac(mean: npt.ArrayLike, covariance: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Task-Agnostic Correlations (TAC) error of Shukla et al., TIC-TAC, ICML 2024.

    ``TAC = (1 / (N D)) sum_n sum_i |y_ni - (mu_ni + S_{i,-i} S_{-i,-i}^-1 (y_n,-i - mu_n,-i))|``,
    the mean absolute error of predicting each coordinate from the observed other coordinates by
    Gaussian conditioning. Vectorised through the precision matrix, see ``conditional_residuals``.
    With D = 1, or a diagonal covariance, it reduces to the mean absolute error.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted symmetric positive-definite covariances.
    target : array_like, shape (N, D)
        Observed targets.

    Returns
    -------
    float
        TAC, in target units.
    """
    return float(np.mean(np.abs(conditional_residuals(mean, covariance, target))))


def calibration(
    mean: npt.ArrayLike,
    covariance: npt.ArrayLike,
    target: npt.ArrayLike,
    levels: npt.ArrayLike = DEFAULT_LEVELS,
) -> Calibration:
    """Coverage of the central Mahalanobis ellipsoids at several nominal levels.

    ``coverage(a) = (1 / N) #{n : m_n <= chi2.ppf(a, D)}`` with ``m_n`` the squared Mahalanobis
    distance (``mahalanobis_squared``); ``error = (1 / L) sum_a |coverage(a) - a|``. Coverage above
    the level means under-confident (too wide) covariances, below means over-confident.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted symmetric positive-definite covariances.
    target : array_like, shape (N, D)
        Observed targets.
    levels : array_like, shape (L,)
        Nominal levels, each strictly between 0 and 1; ``DEFAULT_LEVELS`` by default.

    Returns
    -------
    Calibration
        Read-only ``levels`` and ``coverage`` arrays of shape (L,) and the scalar ``error``.
    """
    nominal = _as_float64(levels, "levels")
    if nominal.ndim != 1 or nominal.size == 0:
        raise ValueError(f"levels: expected shape (L,) with L >= 1, got {nominal.shape}")
    if np.any((nominal <= 0.0) | (nominal >= 1.0)):
        raise ValueError(f"levels: expected values strictly between 0 and 1, got {nominal.tolist()}")
    distances = mahalanobis_squared(mean, covariance, target)
    dim = np.shape(target)[-1]
    thresholds = stats.chi2.ppf(nominal, dim)
    coverage = np.mean(distances[:, None] <= thresholds[None, :], axis=0)
    nominal.flags.writeable = False
    coverage.flags.writeable = False
    return Calibration(levels=nominal, coverage=coverage, error=float(np.mean(np.abs(coverage - nominal))))


def sample_gaussian(
    mean: npt.ArrayLike, covariance: npt.ArrayLike, num_samples: int, seed: int
) -> FloatArray:
    """Draw samples from each predicted Gaussian.

    ``x_ns = mu_n + L_n z_ns`` with ``S_n = L_n L_n^T`` (Cholesky) and ``z_ns`` standard normal from
    ``numpy.random.default_rng(seed)``, drawn as one (N, S, D) array.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Means.
    covariance : array_like, shape (N, D, D)
        Symmetric positive-definite covariances.
    num_samples : int
        Number S >= 1 of draws per Gaussian.
    seed : int
        Seed of the NumPy generator; equal seeds give equal draws.

    Returns
    -------
    ndarray, shape (N, S, D)
        Samples, in target units.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples: expected an integer >= 1, got {num_samples}")
    mu = _as_rows(mean, "mean")
    num, dim = mu.shape
    factor = _cholesky(_as_covariance(covariance, "covariance", num, dim), "covariance")
    noise = np.random.default_rng(seed).standard_normal((num, num_samples, dim))
    samples: FloatArray = mu[:, None, :] + noise @ np.swapaxes(factor, -1, -2)
    return samples


def energy_score(
    mean: npt.ArrayLike,
    covariance: npt.ArrayLike,
    target: npt.ArrayLike,
    *,
    num_samples: int = DEFAULT_ENERGY_SAMPLES,
    seed: int = 0,
) -> float:
    """Monte-Carlo energy score of the predicted Gaussians ("nrg" ensemble estimator).

    With ``x_1..x_m`` drawn by ``sample_gaussian(mean, covariance, m, seed)``, per sample
    ``ES_n = (1 / m) sum_i ||x_i - y_n|| - (1 / (2 m^2)) sum_i sum_j ||x_i - x_j||`` (Euclidean
    norms), averaged over the N samples. Lower is better; the score is proper. The pairwise term is
    evaluated in chunks of samples holding at most ``ENERGY_CHUNK_ELEMENTS`` differences (at least
    one sample per chunk), so memory stays bounded for any N.

    Parameters
    ----------
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted symmetric positive-definite covariances.
    target : array_like, shape (N, D)
        Observed targets.
    num_samples : int
        Ensemble size m >= 1 per sample; ``DEFAULT_ENERGY_SAMPLES`` by default.
    seed : int
        Seed of the draws.

    Returns
    -------
    float
        Mean energy score, in target units.
    """
    mu = _as_rows(mean, "mean")
    y = _as_rows_like(target, "target", mu.shape)
    ensemble = sample_gaussian(mu, covariance, num_samples, seed)
    num, _, dim = ensemble.shape
    accuracy = np.mean(np.linalg.norm(ensemble - y[:, None, :], axis=-1), axis=-1)
    chunk = max(1, ENERGY_CHUNK_ELEMENTS // (num_samples * num_samples * dim))
    spread = np.empty(num)
    for start in range(0, num, chunk):
        block = ensemble[start : start + chunk]
        difference = block[:, :, None, :] - block[:, None, :, :]
        pairwise = np.sqrt(np.einsum("nijd,nijd->nij", difference, difference))
        spread[start : start + chunk] = np.sum(pairwise, axis=(-2, -1)) / num_samples**2
    return float(np.mean(accuracy - 0.5 * spread))


def kl_to_truth(
    true_mean: npt.ArrayLike,
    true_covariance: npt.ArrayLike,
    mean: npt.ArrayLike,
    covariance: npt.ArrayLike,
) -> float:
    """Kullback-Leibler divergence KL(true || predicted), averaged over samples.

    ``KL_n = 0.5 [tr(S_p^-1 S_t) + (mu_p - mu_t)^T S_p^-1 (mu_p - mu_t) - D + log det S_p - log det S_t]``
    with t the true and p the predicted Gaussian. The expectation is under the truth, so predicted
    covariances that are too small (over-confident) are penalised heavily: the trace and Mahalanobis
    terms grow without bound as S_p shrinks, while too-wide predictions only grow logarithmically.
    ``tr(S_p^-1 S_t) = ||L_p^-1 L_t||_F^2`` and the Mahalanobis term use triangular solves.

    Parameters
    ----------
    true_mean : array_like, shape (N, D)
        Means of the true Gaussians.
    true_covariance : array_like, shape (N, D, D)
        Covariances of the true Gaussians, symmetric positive definite.
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted covariances, symmetric positive definite.

    Returns
    -------
    float
        Mean KL divergence, in nats.
    """
    mu_t = _as_rows(true_mean, "true_mean")
    num, dim = mu_t.shape
    factor_t = _cholesky(_as_covariance(true_covariance, "true_covariance", num, dim), "true_covariance")
    mu_p = _as_rows_like(mean, "mean", mu_t.shape)
    factor_p = _cholesky(_as_covariance(covariance, "covariance", num, dim), "covariance")
    trace = np.sum(_solve_lower(factor_p, factor_t) ** 2, axis=(-2, -1))
    mahalanobis = np.sum(_solve_lower(factor_p, mu_p - mu_t) ** 2, axis=-1)
    divergence = 0.5 * (trace + mahalanobis - dim + _log_det(factor_p) - _log_det(factor_t))
    return float(np.mean(divergence))


def _sqrtm_psd(matrix: FloatArray) -> FloatArray:
    """Symmetric square root of a batch of symmetric PSD matrices (eigenvalues clamped at 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    root: FloatArray = (eigenvectors * np.sqrt(np.maximum(eigenvalues, 0.0))[..., None, :]) @ np.swapaxes(
        eigenvectors, -1, -2
    )
    return root


def wasserstein_to_truth(
    true_mean: npt.ArrayLike,
    true_covariance: npt.ArrayLike,
    mean: npt.ArrayLike,
    covariance: npt.ArrayLike,
) -> float:
    """Exact squared 2-Wasserstein distance between true and predicted Gaussians, averaged over samples.

    ``W2^2_n = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_2^1/2 S_1 S_2^1/2)^1/2)`` with 1 the true and
    2 the predicted Gaussian (the distance is symmetric). Symmetric square roots come from batched
    ``numpy.linalg.eigh`` with eigenvalues clamped at 0; the trace of the outer root is the sum of
    the square roots of the clamped eigenvalues of ``S_2^1/2 S_1 S_2^1/2``.

    Parameters
    ----------
    true_mean : array_like, shape (N, D)
        Means of the true Gaussians.
    true_covariance : array_like, shape (N, D, D)
        Covariances of the true Gaussians, symmetric positive definite.
    mean : array_like, shape (N, D)
        Predicted means.
    covariance : array_like, shape (N, D, D)
        Predicted covariances, symmetric positive definite.

    Returns
    -------
    float
        Mean squared W2 distance, in squared target units.
    """
    mu_1 = _as_rows(true_mean, "true_mean")
    num, dim = mu_1.shape
    sigma_1 = _as_covariance(true_covariance, "true_covariance", num, dim)
    _cholesky(sigma_1, "true_covariance")
    mu_2 = _as_rows_like(mean, "mean", mu_1.shape)
    sigma_2 = _as_covariance(covariance, "covariance", num, dim)
    _cholesky(sigma_2, "covariance")
    root_2 = _sqrtm_psd(sigma_2)
    cross = root_2 @ sigma_1 @ root_2
    cross_eigenvalues = np.linalg.eigvalsh(0.5 * (cross + np.swapaxes(cross, -1, -2)))
    cross_trace = np.sum(np.sqrt(np.maximum(cross_eigenvalues, 0.0)), axis=-1)
    traces = np.trace(sigma_1, axis1=-2, axis2=-1) + np.trace(sigma_2, axis1=-2, axis2=-1)
    distances = np.sum((mu_1 - mu_2) ** 2, axis=-1) + traces - 2.0 * cross_trace
    return float(np.mean(distances))


def compute_metrics(
    mean: npt.ArrayLike,
    covariance: npt.ArrayLike,
    targets: npt.ArrayLike,
    *,
    true_mean: npt.ArrayLike | None = None,
    true_covariance: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """The metrics of predictions ``mean`` ``(N, D)``, ``covariance`` ``(N, D, D)`` against ``targets``.

    The one place that decides which metrics a report holds: the trainer's test metrics (``model.json``)
    and ``covserve-train evaluate`` both come from it. Keys: ``mse`` (per dimension), ``nll`` (nats per
    sample), ``tac``, ``calibration_error`` (mean absolute coverage error over :data:`DEFAULT_LEVELS`),
    ``samples`` (``N``) and, when the true Gaussians are known (synthetic data; give both or neither),
    ``kl_to_truth`` (KL(true ‖ predicted), nats) and ``w2_to_truth`` (squared 2-Wasserstein distance).
    All in target units. Raises ``ValueError`` on inconsistent shapes or non-SPD covariances.
    """
    if (true_mean is None) != (true_covariance is None):
        raise ValueError("true_mean, true_covariance: give both (synthetic data) or neither")
    report = {
        "mse": mse(mean, targets),
        "nll": gaussian_nll(mean, covariance, targets),
        "tac": tac(mean, covariance, targets),
        "calibration_error": calibration(mean, covariance, targets).error,
        "samples": float(np.shape(targets)[0]),
    }
    if true_mean is not None and true_covariance is not None:
        report["kl_to_truth"] = kl_to_truth(true_mean, true_covariance, mean, covariance)
        report["w2_to_truth"] = wasserstein_to_truth(true_mean, true_covariance, mean, covariance)
    return report

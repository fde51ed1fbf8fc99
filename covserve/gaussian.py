"""Batched Gaussian utilities in numpy, shared by the service, the estimator and the client (no torch).

Shapes: ``mean`` ``(B, D)``, ``covariance`` ``(B, D, D)``; float64 throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from covserve.repository import OUTPUT_SYMMETRY_RTOL

__all__ = [
    "condition",
    "correlation",
    "is_symmetric_positive_definite",
    "log_det_if_positive_definite",
    "mahalanobis",
    "marginal_intervals",
]

Array = NDArray[np.float64]


def _split_index(dim: int, observed: Sequence[int]) -> tuple[list[int], list[int]]:
    observed_list = list(observed)
    if len(set(observed_list)) != len(observed_list) or any(not 0 <= i < dim for i in observed_list):
        raise ValueError(f"observed: expected distinct indices in [0, {dim}), got {observed_list}")
    if len(observed_list) == dim:
        raise ValueError(f"observed: at least one of the {dim} targets must stay unobserved, got all of them")
    return [i for i in range(dim) if i not in observed_list], observed_list


def condition(mean: Array, covariance: Array, observed: Sequence[int], values: Array) -> tuple[Array, Array]:
    """Distribution of the unobserved targets given ``y[observed] = values`` ``(B, K)``.

    Returns the conditional mean ``(B, D − K)`` and covariance ``(B, D − K, D − K)`` of the remaining
    targets in ascending index order: ``μ_u + Σ_uo Σ_oo⁻¹ (v − μ_o)`` and ``Σ_uu − Σ_uo Σ_oo⁻¹ Σ_ou``.
    """
    free, fixed = _split_index(mean.shape[-1], observed)
    if not fixed:
        return mean, covariance
    observed_block = covariance[..., fixed, :][..., :, fixed]
    cross = covariance[..., fixed, :][..., :, free]
    gain = np.linalg.solve(observed_block, cross)
    shift = (values - mean[..., fixed])[..., None]
    conditional_mean = mean[..., free] + (np.swapaxes(gain, -1, -2) @ shift)[..., 0]
    conditional = covariance[..., free, :][..., :, free] - np.swapaxes(cross, -1, -2) @ gain
    return conditional_mean, 0.5 * (conditional + np.swapaxes(conditional, -1, -2))


def marginal_intervals(mean: Array, covariance: Array, level: float) -> tuple[Array, Array]:
    """Central per-target intervals holding probability ``level`` under each marginal: ``(B, D)`` twice."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level}")
    quantile = NormalDist().inv_cdf((1.0 + level) / 2.0)
    half_width = quantile * np.sqrt(np.diagonal(covariance, axis1=-2, axis2=-1))
    return mean - half_width, mean + half_width


def correlation(covariance: Array) -> Array:
    """Correlation matrices ``Σᵢⱼ / √(Σᵢᵢ Σⱼⱼ)`` ``(B, D, D)`` with an exact unit diagonal."""
    std = np.sqrt(np.diagonal(covariance, axis1=-2, axis2=-1))
    result: Array = covariance / (std[..., :, None] * std[..., None, :])
    index = np.arange(covariance.shape[-1])
    result[..., index, index] = 1.0
    return result


def mahalanobis(points: NDArray[np.floating[Any]], mean: Array, precision: Array) -> Array:
    """``(B,)`` distances ``√((x − μ)ᵀ P (x − μ))`` of ``points`` ``(B, M)`` (any float dtype; the arithmetic
    is float64) to ``mean`` ``(M,)`` under the precision ``P`` ``(M, M)`` (rounding below zero is clipped)."""
    centred = points - mean
    squared = np.einsum("bi,ij,bj->b", centred, precision, centred)
    distance: Array = np.sqrt(np.maximum(squared, 0.0))
    return distance


def is_symmetric_positive_definite(covariance: Array) -> NDArray[np.bool_]:
    """``(B,)`` booleans: finite, symmetric to :data:`covserve.repository.OUTPUT_SYMMETRY_RTOL` and
    Cholesky-factorisable."""
    healthy, _ = log_det_if_positive_definite(covariance)
    return healthy


def log_det_if_positive_definite(covariance: Array) -> tuple[NDArray[np.bool_], Array]:
    """``(B,)`` booleans as :func:`is_symmetric_positive_definite` and ``(B,)`` log determinants.

    One batched Cholesky factorisation serves both: ``log det Σ = 2 Σᵢ log Lᵢᵢ``; rows fall back to one
    factorisation each only when the batch holds a failing matrix. Rows that are not positive definite get
    a NaN log determinant.
    """
    flat = covariance.reshape(*covariance.shape[:-2], -1)
    finite = np.isfinite(flat).all(axis=-1)
    with np.errstate(invalid="ignore"):
        scale = np.abs(flat).max(axis=-1)
        asymmetry = np.abs(covariance - np.swapaxes(covariance, -1, -2)).reshape(flat.shape).max(axis=-1)
        healthy: NDArray[np.bool_] = finite & (asymmetry <= OUTPUT_SYMMETRY_RTOL * scale)
    log_det = np.full(healthy.shape, np.nan)
    try:
        log_det[healthy] = _log_det(np.linalg.cholesky(covariance[healthy]))
    except np.linalg.LinAlgError:
        for index in zip(*np.nonzero(healthy), strict=True):
            try:
                log_det[index] = _log_det(np.linalg.cholesky(covariance[index]))
            except np.linalg.LinAlgError:
                healthy[index] = False
    return healthy, log_det


def _log_det(factor: NDArray[Any]) -> Array:
    result: Array = 2.0 * np.log(np.diagonal(factor, axis1=-2, axis2=-1)).sum(axis=-1)
    return result

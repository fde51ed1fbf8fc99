"""Batched Gaussian utilities in torch (differentiable); ``service.gaussian`` is the numpy twin.

Shapes: ``mean`` ``(B, D)``, ``covariance`` ``(B, D, D)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["condition", "correlation", "is_symmetric_positive_definite", "marginal_intervals"]

SYMMETRY_RTOL = 1e-6
"""Largest ``|Σ − Σᵀ|`` relative to ``max |Σ|`` that :func:`is_symmetric_positive_definite` accepts."""


def _split_index(dim: int, observed: Sequence[int]) -> tuple[list[int], list[int]]:
    observed_list = list(observed)
    if len(set(observed_list)) != len(observed_list) or any(not 0 <= i < dim for i in observed_list):
        raise ValueError(f"observed: expected distinct indices in [0, {dim}), got {observed_list}")
    if len(observed_list) == dim:
        raise ValueError(f"observed: at least one of the {dim} targets must stay unobserved, got all of them")
    return [i for i in range(dim) if i not in observed_list], observed_list


def condition(
    mean: Tensor, covariance: Tensor, observed: Sequence[int], values: Tensor
) -> tuple[Tensor, Tensor]:
    """Distribution of the unobserved targets given ``y[observed] = values`` ``(B, K)``.

    Returns the conditional mean ``(B, D − K)`` and covariance ``(B, D − K, D − K)`` of the remaining
    targets in ascending index order: ``μ_u + Σ_uo Σ_oo⁻¹ (v − μ_o)`` and ``Σ_uu − Σ_uo Σ_oo⁻¹ Σ_ou``,
    by a Cholesky solve of ``Σ_oo``.
    """
    free, fixed = _split_index(mean.shape[-1], observed)
    if not fixed:
        return mean, covariance
    cholesky = torch.linalg.cholesky(covariance[..., fixed, :][..., :, fixed])
    cross = covariance[..., fixed, :][..., :, free]
    gain = torch.cholesky_solve(cross, cholesky)
    shift = (values - mean[..., fixed]).unsqueeze(-1)
    conditional_mean = mean[..., free] + (gain.mT @ shift).squeeze(-1)
    conditional = covariance[..., free, :][..., :, free] - cross.mT @ gain
    return conditional_mean, 0.5 * (conditional + conditional.mT)


def marginal_intervals(mean: Tensor, covariance: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """Central per-target intervals holding probability ``level`` under each marginal: ``(B, D)`` twice."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level}")
    quantile = torch.special.ndtri(torch.tensor((1.0 + level) / 2.0, dtype=mean.dtype))
    half_width = quantile * torch.diagonal(covariance, dim1=-2, dim2=-1).sqrt()
    return mean - half_width, mean + half_width


def correlation(covariance: Tensor) -> Tensor:
    """Correlation matrices ``Σᵢⱼ / √(Σᵢᵢ Σⱼⱼ)`` ``(B, D, D)`` with an exact unit diagonal."""
    std = torch.diagonal(covariance, dim1=-2, dim2=-1).sqrt()
    result = covariance / (std.unsqueeze(-1) * std.unsqueeze(-2))
    return torch.diagonal_scatter(result, torch.ones_like(std), dim1=-2, dim2=-1)


def is_symmetric_positive_definite(covariance: Tensor) -> Tensor:
    """``(B,)`` booleans: finite, symmetric to :data:`SYMMETRY_RTOL` and Cholesky-factorisable."""
    finite = torch.isfinite(covariance).flatten(-2).all(dim=-1)
    scale = covariance.abs().flatten(-2).amax(dim=-1)
    asymmetry = (covariance - covariance.mT).abs().flatten(-2).amax(dim=-1)
    symmetric = asymmetry <= SYMMETRY_RTOL * scale
    safe = torch.where(
        finite[..., None, None],
        covariance,
        torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device),
    )
    factorised: Tensor = torch.linalg.cholesky_ex(0.5 * (safe + safe.mT)).info == 0
    return finite & symmetric & factorised

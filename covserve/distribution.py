"""The predictive distribution of a batch of rows: one multivariate normal per row, in numpy.

:class:`PredictiveDistribution` is what :meth:`covserve.CovarianceRegressor.predict_distribution` and the
client (:meth:`covserve.client.Client.predict`) return, so a notebook scores, samples and conditions the
same way whether the model runs in process or behind the service. Imports neither torch nor the service.

Shapes: ``N`` rows, ``D`` targets; ``mean`` ``(N, D)``, ``covariance`` ``(N, D, D)``, float64, raw units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from covserve import gaussian

__all__ = ["PredictiveDistribution"]

Array = NDArray[np.float64]

_LOG_2PI = math.log(2.0 * math.pi)
_MATRIX_NDIM = 2
_COVARIANCE_NDIM = 3


@dataclass(frozen=True, eq=False)
class PredictiveDistribution:
    """``N`` independent multivariate normals ``N(mean[i], covariance[i])`` over ``D`` named targets.

    Attributes
    ----------
    mean : NDArray[np.float64], shape (N, D)
    covariance : NDArray[np.float64], shape (N, D, D)
        Symmetric positive definite.
    target_names : tuple[str, ...], length D

    Raises
    ------
    ValueError
        If the shapes disagree, a value is not finite, or a covariance is not symmetric positive definite.
    """

    mean: Array
    covariance: Array
    target_names: tuple[str, ...]

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        covariance = np.asarray(self.covariance, dtype=np.float64)
        if mean.ndim != _MATRIX_NDIM or covariance.shape != (*mean.shape, mean.shape[-1]):
            raise ValueError(
                f"mean must be (N, D) and covariance (N, D, D), got {mean.shape} and {covariance.shape}"
            )
        if len(self.target_names) != mean.shape[1]:
            raise ValueError(f"{len(self.target_names)} target names for {mean.shape[1]} targets")
        if not np.isfinite(mean).all():
            raise ValueError(f"mean: row {int(np.argmin(np.isfinite(mean).all(axis=1)))} is not finite")
        healthy = gaussian.is_symmetric_positive_definite(covariance)
        if not healthy.all():
            raise ValueError(f"covariance: row {int(np.argmin(healthy))} is not symmetric positive definite")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "covariance", covariance)
        object.__setattr__(self, "target_names", tuple(self.target_names))

    def __len__(self) -> int:
        """Rows ``N``."""
        return int(self.mean.shape[0])

    @cached_property
    def scale(self) -> Array:
        """Lower-triangular Cholesky factors ``L`` ``(N, D, D)`` with ``L Lᵀ = Σ``."""
        return np.linalg.cholesky(self.covariance).astype(np.float64, copy=False)

    @property
    def std(self) -> Array:
        """Marginal standard deviations ``√Σᵢᵢ`` ``(N, D)``."""
        return np.sqrt(np.diagonal(self.covariance, axis1=-2, axis2=-1))

    @property
    def correlation(self) -> Array:
        """Correlation matrices ``(N, D, D)``."""
        return gaussian.correlation(self.covariance)

    def logpdf(self, targets: ArrayLike) -> Array:
        """Log density of each row's ``targets`` ``(N, D)`` under its normal: ``(N,)``, in nats.

        ``−½ (D log 2π + log det Σ + (y − μ)ᵀ Σ⁻¹ (y − μ))``, through the Cholesky factor.
        """
        values = self._rows_of_targets(targets, "targets")
        whitened = np.linalg.solve(self.scale, (values - self.mean)[..., None])[..., 0]
        log_det = 2.0 * np.log(np.diagonal(self.scale, axis1=-2, axis2=-1)).sum(axis=-1)
        result: Array = -0.5 * (self.mean.shape[1] * _LOG_2PI + log_det + (whitened**2).sum(axis=-1))
        return result

    def sample(self, n: int = 1, seed: int | np.random.Generator | None = None) -> Array:
        """``n`` draws per row, ``(n, N, D)``: ``μ + L z`` with ``z`` standard normal from ``seed``."""
        if n < 1:
            raise ValueError(f"n: expected a positive number of samples, got {n}")
        generator = np.random.default_rng(seed)
        noise = generator.standard_normal((n, *self.mean.shape))
        draws: Array = self.mean + np.einsum("nij,snj->sni", self.scale, noise)
        return draws

    def interval(self, level: float = 0.9) -> tuple[Array, Array]:
        """Central marginal intervals holding probability ``level``: ``lower`` and ``upper``, ``(N, D)``."""
        return gaussian.marginal_intervals(self.mean, self.covariance, level)

    def condition(self, observed: Mapping[str | int, ArrayLike]) -> PredictiveDistribution:
        """The distribution of the other targets given ``observed`` values of some.

        ``observed`` maps a target (its name or index) to its value, a scalar for every row or ``(N,)``.
        Returns a distribution over the remaining targets, in their order:
        ``μ_u + Σ_uo Σ_oo⁻¹ (v − μ_o)`` and ``Σ_uu − Σ_uo Σ_oo⁻¹ Σ_ou``.
        """
        indices = [self._target_index(key) for key in observed]
        columns = [
            np.broadcast_to(np.asarray(value, dtype=np.float64), (len(self),)) for value in observed.values()
        ]
        values = np.stack(columns, axis=-1) if columns else np.empty((len(self), 0))
        if not np.isfinite(values).all():
            raise ValueError("observed: values must be finite")
        mean, covariance = gaussian.condition(self.mean, self.covariance, indices, values)
        remaining = tuple(name for index, name in enumerate(self.target_names) if index not in indices)
        return PredictiveDistribution(mean, covariance, remaining)

    def _target_index(self, key: str | int) -> int:
        if isinstance(key, str):
            if key not in self.target_names:
                raise ValueError(
                    f"observed: unknown target {key!r}; the targets are {list(self.target_names)}"
                )
            return self.target_names.index(key)
        if not 0 <= int(key) < len(self.target_names):
            raise ValueError(f"observed: target index {key} is outside [0, {len(self.target_names)})")
        return int(key)

    def _rows_of_targets(self, targets: Any, name: str) -> Array:
        values = np.asarray(targets, dtype=np.float64)
        if values.ndim == 1 and self.mean.shape[1] == 1:
            values = values[:, None]
        if values.shape != self.mean.shape:
            raise ValueError(f"{name}: expected shape {self.mean.shape}, got {values.shape}")
        return values

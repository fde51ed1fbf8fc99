"""Covariance parameterisations: raw network outputs ``(B, R)`` to a factored covariance ``Σ = A Aᵀ``.

Every parameterisation returns a :class:`FactoredCovariance`, which exposes the covariance ``(B, D, D)``,
the factor ``A`` ``(B, D, D)``, ``log det Σ`` ``(B,)``, whitening ``A⁻¹ v`` and solves ``Σ⁻¹ v``. None of
them calls an eigendecomposition: the training path uses triangular solves and, where a covariance is
assembled as a matrix, one batched Cholesky factorisation. ``C`` is lower triangular with a softplus
diagonal plus :data:`DIAGONAL_FLOOR`; ``ridge(G) = G + (ε tr(G) / D + floor) I`` with
``ε =`` :data:`RELATIVE_RIDGE` bounds every condition number, so every returned covariance is numerically
positive definite even for raw outputs of ``±1e4`` (see :mod:`training.numerics` for why a bare ``C Cᵀ``
is not).

================  ===============================================  ==========================
kind              covariance                                       raw outputs ``R``
================  ===============================================  ==========================
``cholesky``      ``Σ = L Lᵀ = ridge(C Cᵀ)``, ``C`` lower            ``D (D + 1) / 2``
``sqrt``          ``Σ = S²``, ``S = ridge(C Cᵀ)``                     ``D (D + 1) / 2``
``diagonal``      ``Σ = diag(σ²)``, ``σ = softplus + floor``         ``D``
``tic``           ``Σ = ridge(k₁ J Jᵀ + k₂ ℋ + C Cᵀ)`` (TIC-TAC)     ``D (D + 1) / 2 + 2``
================  ===============================================  ==========================

The ``sqrt`` factor ``S`` *is* the symmetric square root ``Σ^{1/2}``, so ``‖S − Σ̃^{1/2}‖_F`` is the
paper's bound as printed, with no matrix root taken. The registered ``w2-bound`` trains the ``cholesky``
head against the labels' Cholesky factors instead (:mod:`training.losses` says why); ``‖A − B‖²_F`` bounds
the covariance part of W2² from above for any factors ``A Aᵀ = Σ̂``, ``B Bᵀ = Σ̃``
(:attr:`FactoredCovariance.symmetric_factor` says which form a factor has).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vmap
from torch.nn.functional import softplus

from covserve.training.numerics import DIAGONAL_FLOOR, RAW_OUTPUT_BOUND, RELATIVE_RIDGE

__all__ = [
    "TAYLOR_CHUNK_ELEMENTS",
    "CholeskyParameterisation",
    "CovarianceKind",
    "DiagonalParameterisation",
    "FactoredCovariance",
    "Parameterisation",
    "SqrtParameterisation",
    "SymmetricRootCovariance",
    "TaylorTerms",
    "TicParameterisation",
    "TriangularCovariance",
    "make_parameterisation",
    "taylor_terms",
    "unrolled_cholesky",
]


class CovarianceKind(str, Enum):
    """How a covariance network's raw outputs become a covariance matrix."""

    CHOLESKY = "cholesky"
    """Lower-triangular ``L`` with softplus diagonal plus :data:`DIAGONAL_FLOOR`; ``Σ = L Lᵀ``."""
    SQRT = "sqrt"
    """Symmetric positive-definite square root ``S``; ``Σ = S²``."""
    DIAGONAL = "diagonal"
    """Independent targets: ``Σ = diag(σ²)``."""
    TIC = "tic"
    """Taylor-Induced Covariance (Shukla et al., ICML 2024) from the mean network's input derivatives."""


def _symmetrise(matrix: Tensor) -> Tensor:
    """``(M + Mᵀ) / 2`` over the last two axes, exactly symmetric in floating point."""
    return 0.5 * (matrix + matrix.mT)


class FactoredCovariance(ABC):
    """A batch of covariances ``Σ = A Aᵀ`` held through a square, invertible factor ``A`` ``(B, D, D)``."""

    symmetric_factor: ClassVar[bool]
    """Whether ``A`` is the symmetric root ``Σ^{1/2}`` (else the lower Cholesky factor of ``Σ``)."""

    def __init__(self, factor: Tensor) -> None:
        self.factor = factor

    @property
    def dim(self) -> int:
        """Target dimension ``D``."""
        return int(self.factor.shape[-1])

    def covariance(self) -> Tensor:
        """``Σ = A Aᵀ`` ``(B, D, D)``, exactly symmetric."""
        return _symmetrise(self.factor @ self.factor.mT)

    def variance(self) -> Tensor:
        """Marginal variances ``diag Σ`` ``(B, D)``: squared row norms of ``A``."""
        return self.factor.square().sum(dim=-1)

    @abstractmethod
    def log_det(self) -> Tensor:
        """``log det Σ`` ``(B,)``."""

    @abstractmethod
    def whiten(self, rhs: Tensor) -> Tensor:
        """``A⁻¹ rhs`` for ``rhs`` of shape ``(B, D, K)``; ``‖A⁻¹ r‖² = rᵀ Σ⁻¹ r``."""

    def solve(self, rhs: Tensor) -> Tensor:
        """``Σ⁻¹ rhs`` for ``rhs`` of shape ``(B, D, K)``."""
        return self._whiten_transposed(self.whiten(rhs))

    @abstractmethod
    def _whiten_transposed(self, rhs: Tensor) -> Tensor:
        """``A⁻ᵀ rhs`` for ``rhs`` of shape ``(B, D, K)``."""

    def mahalanobis_squared(self, residual: Tensor) -> Tensor:
        """``rᵀ Σ⁻¹ r`` ``(B,)`` for residuals ``(B, D)``, by whitening (no inverse)."""
        return self.whiten(residual.unsqueeze(-1)).squeeze(-1).square().sum(dim=-1)


class TriangularCovariance(FactoredCovariance):
    """``Σ = L Lᵀ`` with ``L`` lower triangular with a positive diagonal (a Cholesky factor)."""

    symmetric_factor = False

    def log_det(self) -> Tensor:
        """``2 Σᵢ log Lᵢᵢ`` ``(B,)``."""
        return 2.0 * torch.diagonal(self.factor, dim1=-2, dim2=-1).log().sum(dim=-1)

    def whiten(self, rhs: Tensor) -> Tensor:
        """``L⁻¹ rhs`` by a triangular solve; ``rhs`` ``(B, D, K)``."""
        solved: Tensor = torch.linalg.solve_triangular(self.factor, rhs, upper=False)
        return solved

    def _whiten_transposed(self, rhs: Tensor) -> Tensor:
        solved: Tensor = torch.linalg.solve_triangular(self.factor.mT, rhs, upper=True)
        return solved


class SymmetricRootCovariance(FactoredCovariance):
    """``Σ = S²`` with ``S`` symmetric positive definite, held with the Cholesky factor ``T`` of ``S``.

    The factor is ``S`` itself (``S Sᵀ = S² = Σ``). ``log det Σ = 4 Σᵢ log Tᵢᵢ`` and
    ``S⁻¹ v = T⁻ᵀ T⁻¹ v``.
    """

    symmetric_factor = True

    @cached_property
    def root_cholesky(self) -> Tensor:
        """Lower Cholesky factor ``T`` of ``S`` ``(B, D, D)``, computed on first use only."""
        factor: Tensor = torch.linalg.cholesky(self.factor)
        return factor

    def log_det(self) -> Tensor:
        """``4 Σᵢ log Tᵢᵢ`` ``(B,)``."""
        return 4.0 * torch.diagonal(self.root_cholesky, dim1=-2, dim2=-1).log().sum(dim=-1)

    def whiten(self, rhs: Tensor) -> Tensor:
        """``S⁻¹ rhs`` by two triangular solves; ``rhs`` ``(B, D, K)``."""
        return torch.cholesky_solve(rhs, self.root_cholesky, upper=False)

    def _whiten_transposed(self, rhs: Tensor) -> Tensor:
        return self.whiten(rhs)


@dataclass(frozen=True)
class TaylorTerms:
    """Input derivatives of the mean network that the TIC parameterisation consumes (detached).

    ``jacobian`` is ``J = ∂μ/∂x`` ``(B, D, M)``; ``hessian_gram`` is ``ℋᵢⱼ = tr(Hᵢ Hⱼ)`` ``(B, D, D)`` with
    ``Hᵢ = ∂²μᵢ/∂x²`` ``(M, M)``.
    """

    jacobian: Tensor
    hessian_gram: Tensor


TAYLOR_CHUNK_ELEMENTS = 1 << 15
"""Rows per pass of :func:`taylor_terms` times ``D · M``. The pass holds ``O(rows · D · M · width)``
transient values (measured: about 7 MiB per row at D = M = 20 with the default width 402, so an unchunked
2 000-row validation set took 14 GiB); this bound keeps it near 0.6 GiB there, and larger chunks are not
faster per row."""


def taylor_terms(
    mean_network: Callable[[Tensor], Tensor], inputs: Tensor, *, chunk_rows: int | None = None
) -> TaylorTerms:
    """Jacobian and Hessian Gram matrix of ``mean_network`` at every input, without gradient tracking.

    Parameters
    ----------
    mean_network
        Maps ``(B, M)`` to ``(B, D)`` with every output row depending on its own input row only: put
        modules with batch statistics (BatchNorm) in eval mode first.
    inputs
        ``(B, M)``.
    chunk_rows
        Rows per pass; by default ``TAYLOR_CHUNK_ELEMENTS // (D · M)`` (at least 1), which bounds memory.

    Because rows do not interact, the reverse-mode Jacobian of the batch-summed outputs holds every row's
    Jacobian ``(D, B, M)`` at once, and one forward-mode derivative of it per input direction (``M`` in
    all, batched with ``vmap``) gives the Hessian columns of every row: whole-batch matrix products instead
    of a reverse-over-reverse pass per row. The cost is ``O(D M)`` network passes per chunk of rows,
    which is why TIC is the expensive baseline.
    """
    x = inputs.detach()
    if chunk_rows is None:
        with torch.no_grad():
            out_dim = mean_network(x[:1]).shape[-1]
        chunk_rows = max(1, TAYLOR_CHUNK_ELEMENTS // max(1, out_dim * x.shape[-1]))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows: expected at least 1, got {chunk_rows}")
    starts = range(0, max(len(x), 1), chunk_rows)
    chunks = [_taylor_chunk(mean_network, x[start : start + chunk_rows]) for start in starts]
    return TaylorTerms(
        jacobian=torch.cat([chunk.jacobian for chunk in chunks]),
        hessian_gram=torch.cat([chunk.hessian_gram for chunk in chunks]),
    )


def _taylor_chunk(mean_network: Callable[[Tensor], Tensor], x: Tensor) -> TaylorTerms:
    """:func:`taylor_terms` of one chunk of detached rows ``x`` ``(B, M)``."""

    def summed(rows: Tensor) -> Tensor:
        return mean_network(rows).sum(dim=0)

    row_jacobians = jacrev(summed)
    count, in_dim = x.shape
    directions = torch.eye(in_dim, dtype=x.dtype, device=x.device).unsqueeze(1).expand(in_dim, count, in_dim)

    def along(direction: Tensor) -> Tensor:
        derivative: Tensor = jvp(row_jacobians, (x,), (direction,))[1]
        return derivative

    with torch.no_grad():
        jacobian = row_jacobians(x)
        hessian_columns = vmap(along)(directions)
    # hessian_columns[m, d, b, a] = ∂²μ_d / ∂x_a ∂x_m at row b.
    gram = torch.einsum("mdba,meba->bde", hessian_columns, hessian_columns)
    return TaylorTerms(jacobian=jacobian.permute(1, 0, 2), hessian_gram=_symmetrise(gram))


def _bounded(raw: Tensor) -> Tensor:
    """Soft saturation ``b tanh(raw / b)`` with ``b =`` :data:`RAW_OUTPUT_BOUND`."""
    return RAW_OUTPUT_BOUND * torch.tanh(raw / RAW_OUTPUT_BOUND)


def _positive(raw: Tensor) -> Tensor:
    """``softplus(bounded(raw)) + floor``, strictly positive."""
    return softplus(_bounded(raw)) + DIAGONAL_FLOOR


def _lower_triangular(raw: Tensor, dim: int) -> Tensor:
    """Fill ``(B, D (D + 1) / 2)`` raw values into lower-triangular ``(B, D, D)`` with a positive diagonal."""
    rows, cols = torch.tril_indices(dim, dim, device=raw.device)
    diagonal = rows == cols
    values = torch.where(diagonal, _positive(raw), _bounded(raw))
    factor = raw.new_zeros(*raw.shape[:-1], dim, dim)
    factor[..., rows, cols] = values
    return factor


def _positive_inverse(value: float) -> float:
    """The raw value that :func:`_positive` maps to ``value`` (which must exceed the floor)."""
    softplus_argument = math.log(math.expm1(value - DIAGONAL_FLOOR))
    return RAW_OUTPUT_BOUND * math.atanh(softplus_argument / RAW_OUTPUT_BOUND)


def _identity_triangle(dim: int) -> Tensor:
    """Raw values ``(D (D + 1) / 2,)`` that :func:`_lower_triangular` turns into the identity ``C = I``."""
    rows, cols = torch.tril_indices(dim, dim)
    return torch.where(rows == cols, _positive_inverse(1.0), 0.0)


class Parameterisation(ABC):
    """Maps raw covariance-network outputs ``(B, raw_size)`` to a :class:`FactoredCovariance`."""

    kind: ClassVar[CovarianceKind]
    needs_taylor_terms: ClassVar[bool] = False

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim: expected a target dimension >= 1, got {dim}")
        self.dim = dim

    @property
    @abstractmethod
    def raw_size(self) -> int:
        """Number of raw outputs ``R`` the covariance network must emit per sample."""

    @abstractmethod
    def identity_raw(self) -> Tensor:
        """Raw outputs ``(raw_size,)`` whose learned factor is the identity: ``Σ = I`` up to the ridge.

        The covariance network's output layer starts there (:class:`training.networks.CovarianceModel`):
        unit variance in standardised target units, the data's own scale.
        """

    @abstractmethod
    def _build(self, raw: Tensor, taylor: TaylorTerms | None, exportable: bool) -> FactoredCovariance: ...

    def __call__(
        self, raw: Tensor, taylor: TaylorTerms | None = None, *, exportable: bool = False
    ) -> FactoredCovariance:
        """Build the covariance of every sample from ``raw`` ``(B, raw_size)``.

        ``exportable=True`` replaces ``torch.linalg.cholesky`` by :func:`unrolled_cholesky` (elementary
        ops only), because ONNX has no Cholesky operator; both give the same factor.
        """
        if raw.ndim != 2 or raw.shape[-1] != self.raw_size:
            raise ValueError(
                f"raw: expected shape (B, {self.raw_size}) for a {self.kind.value} covariance of dimension "
                f"{self.dim}, got {tuple(raw.shape)}"
            )
        return self._build(raw, taylor, exportable)


def _triangle_size(dim: int) -> int:
    return dim * (dim + 1) // 2


def unrolled_cholesky(matrix: Tensor) -> Tensor:
    """Lower Cholesky factor of SPD ``matrix`` ``(B, D, D)`` from matmuls, square roots and divisions.

    A column-by-column (Cholesky–Crout) loop over the static ``D``, so tracing it yields an ONNX graph of
    ``O(D)`` nodes. Equal to ``torch.linalg.cholesky`` up to rounding.
    """
    dim = matrix.shape[-1]
    rows = torch.arange(dim, device=matrix.device)
    columns: list[Tensor] = []
    for j in range(dim):
        column = matrix[..., :, j]
        if columns:
            previous = torch.stack(columns, dim=-1)
            column = column - (previous @ previous[..., j, :].unsqueeze(-1)).squeeze(-1)
        pivot = column[..., j : j + 1].sqrt()
        below = (rows >= j).to(matrix.dtype)
        columns.append(column / pivot * below)
    return torch.stack(columns, dim=-1)


def _cholesky(matrix: Tensor, exportable: bool) -> Tensor:
    if exportable:
        return unrolled_cholesky(matrix)
    factor: Tensor = torch.linalg.cholesky(matrix)
    return factor


def _ridge(gram: Tensor, floor: float) -> Tensor:
    """``G + (ε tr(G) / D + floor) I`` ``(B, D, D)`` with ``ε =`` :data:`RELATIVE_RIDGE`, symmetrised."""
    dim = gram.shape[-1]
    mean_eigenvalue = torch.diagonal(gram, dim1=-2, dim2=-1).mean(dim=-1)
    shift = RELATIVE_RIDGE * mean_eigenvalue + floor
    eye = torch.eye(dim, dtype=gram.dtype, device=gram.device)
    return _symmetrise(gram) + shift[..., None, None] * eye


class CholeskyParameterisation(Parameterisation):
    """``Σ = ridge(C Cᵀ)`` held by its Cholesky factor ``L``; ``C`` from ``D (D + 1) / 2`` raw values.

    The ridge adds ``floor²`` (a variance) so every marginal standard deviation is at least the floor.
    """

    kind = CovarianceKind.CHOLESKY

    @property
    def raw_size(self) -> int:
        return _triangle_size(self.dim)

    def identity_raw(self) -> Tensor:
        return _identity_triangle(self.dim)

    def _build(self, raw: Tensor, taylor: TaylorTerms | None, exportable: bool) -> FactoredCovariance:
        inner = _lower_triangular(raw, self.dim)
        covariance = _ridge(inner @ inner.mT, DIAGONAL_FLOOR**2)
        return TriangularCovariance(_cholesky(covariance, exportable))


class SqrtParameterisation(Parameterisation):
    """``Σ = S²`` with the symmetric square root ``S = ridge(C Cᵀ)`` (ridge floor: :data:`DIAGONAL_FLOOR`).

    The factor is ``S`` itself, so the W2 bound compares ``S`` with the label's square root directly.
    """

    kind = CovarianceKind.SQRT

    @property
    def raw_size(self) -> int:
        return _triangle_size(self.dim)

    def identity_raw(self) -> Tensor:
        return _identity_triangle(self.dim)

    def _build(self, raw: Tensor, taylor: TaylorTerms | None, exportable: bool) -> FactoredCovariance:
        inner = _lower_triangular(raw, self.dim)
        root = _ridge(inner @ inner.mT, DIAGONAL_FLOOR)
        return SymmetricRootCovariance(root)


class DiagonalParameterisation(Parameterisation):
    """``Σ = diag(σ²)``, ``σ = softplus(raw) + floor``; the factor is ``diag(σ)``."""

    kind = CovarianceKind.DIAGONAL

    @property
    def raw_size(self) -> int:
        return self.dim

    def identity_raw(self) -> Tensor:
        return torch.full((self.dim,), _positive_inverse(1.0))

    def _build(self, raw: Tensor, taylor: TaylorTerms | None, exportable: bool) -> FactoredCovariance:
        return TriangularCovariance(torch.diag_embed(_positive(raw)))


class TicParameterisation(Parameterisation):
    """Taylor-Induced Covariance ``Σ = ridge(k₁ J Jᵀ + k₂ ℋ + C Cᵀ)`` (Shukla, Salzmann, Alahi, ICML 2024).

    ``k₁, k₂`` are the softplus of the last two raw outputs (TIC-TAC squares them; softplus keeps the sign
    constraint with a bounded gradient), ``C`` comes from the others. ``J`` and ``ℋ`` come from
    :func:`taylor_terms` and carry no gradient.
    """

    kind = CovarianceKind.TIC
    needs_taylor_terms = True

    @property
    def raw_size(self) -> int:
        return _triangle_size(self.dim) + 2

    def identity_raw(self) -> Tensor:
        """``C = I`` and Taylor scales ``k₁ = k₂ = softplus(0) = log 2`` (the Taylor terms are the mean
        network's and not the identity, so ``Σ = I + log 2 (J Jᵀ + ℋ)`` up to the ridge)."""
        return torch.cat([_identity_triangle(self.dim), torch.zeros(2)])

    def _build(self, raw: Tensor, taylor: TaylorTerms | None, exportable: bool) -> FactoredCovariance:
        if taylor is None:
            raise ValueError(
                "taylor: the tic parameterisation needs the mean network's TaylorTerms, got None"
            )
        inner = _lower_triangular(raw[:, :-2], self.dim)
        scales = softplus(_bounded(raw[:, -2:]))
        gram = (
            scales[:, 0, None, None] * (taylor.jacobian @ taylor.jacobian.mT)
            + scales[:, 1, None, None] * taylor.hessian_gram
            + inner @ inner.mT
        )
        return TriangularCovariance(_cholesky(_ridge(gram, DIAGONAL_FLOOR**2), exportable))


_REGISTRY: dict[CovarianceKind, type[Parameterisation]] = {
    cls.kind: cls
    for cls in (CholeskyParameterisation, SqrtParameterisation, DiagonalParameterisation, TicParameterisation)
}


def make_parameterisation(kind: CovarianceKind | str, dim: int) -> Parameterisation:
    """The parameterisation named ``kind`` (a :class:`CovarianceKind` or its plain string) for ``D = dim``."""
    try:
        key = CovarianceKind(kind)
    except ValueError:
        valid = ", ".join(k.value for k in CovarianceKind)
        raise ValueError(f"kind: expected one of {valid}, got {kind!r}") from None
    return _REGISTRY[key](dim)

"""Covariance pseudo-labels from input-space neighbourhoods (ToSS, ICLR 2025, Algorithm 1, and beyond).

For every training input ``xᵢ`` the ``k`` nearest neighbours under the Mahalanobis metric of the training
inputs, and their weights, are found once (:func:`find_neighbourhoods`):

    dᵢⱼ = (xⱼ − xᵢ)ᵀ Cov(X)⁻¹ (xⱼ − xᵢ)                (squared, as in the paper)
    wᵢ = softmax(−dᵢ,nbr / (τ d̄ᵢ))  over the k nearest j   (closer neighbours weigh more)

A label scheme (:class:`LabelScheme`) then turns each neighbourhood into a covariance label ``Σ̃ᵢ`` (plus
the jitter ridge :data:`~training.numerics.PSEUDO_LABEL_JITTER`, so every label is SPD):

* ``targets`` (:func:`target_labels`, the paper's Algorithm 1): ``μ̃ᵢ = Σⱼ wᵢⱼ yⱼ``,
  ``Σ̃ᵢ = Σⱼ wᵢⱼ (yⱼ − μ̃ᵢ)(yⱼ − μ̃ᵢ)ᵀ``. The conditional mean's variation across the neighbourhood adds
  ``Σⱼ wᵢⱼ (μ(xⱼ) − μ̄)(μ(xⱼ) − μ̄)ᵀ`` to every label (for a linear mean ``μ(x) = Bx``, ``B Cᵢ Bᵀ`` with
  ``Cᵢ`` the neighbours' weighted input covariance), and the label never sees the mean network's error.
* ``residuals`` (:func:`residual_labels`): ``Σ̃ᵢ = Σⱼ wᵢⱼ rⱼ rⱼᵀ`` with ``rⱼ = yⱼ − μ̂(xⱼ)`` of the
  current mean network, refreshed during training over the same neighbourhoods (``O(N k D²)``, no new
  search). The mean's variation is removed by the network, and its error is in the label.
* ``local-linear`` (:func:`local_linear_labels`): the residual covariance of a weighted least-squares fit
  ``y ≈ a + B(x − xᵢ)`` inside each neighbourhood, with its degrees-of-freedom correction: first-order
  mean variation removed without a network (local-linear variance estimation, Fan & Yao 1998).

The printed algorithm writes ``softmax(dist)``, which would favour *far* neighbours and contradicts its own
Figure 3 caption; we use ``softmax(−d / (τ d̄ᵢ))``, where ``d̄ᵢ`` is the mean squared distance of
``xᵢ``'s k nearest neighbours. The printed algorithm has no temperature at all (``τ d̄ᵢ = 1``), which makes
the weights depend on the input dimension and sample size: with 8 whitened inputs ``τ = 0.1`` already puts
all weight on the query itself, and with 16 inputs ``τ = 1`` does (the label collapses to the jitter). The
relative temperature is scale-free; ``temperature_scale="absolute"`` restores the literal reading. The
query itself is among its neighbours (distance 0), the literal
reading; ``include_self=False`` drops it.

The paper publishes neither ``k`` nor ``τ``. The defaults come from an ablation on the TIC-TAC synthetic
generator (``training.synthetic.multivariate(D, D, 1000·D, seed=0)``), scoring the mean relative Frobenius
error ``‖Σ̃ − Σ‖_F / ‖Σ‖_F`` against the true covariance (``python benchmarks/pseudolabels.py --ablation``)::

    D = 4 (N = 4000)       k =   8     16     32     64    128    256
      absolute τ = 1           0.690  0.528  0.426  0.383  0.405  0.479
      relative τ = 1           0.721  0.552  0.435  0.382  0.403  0.502
      relative τ = 3           0.691  0.528  0.426  0.389  0.430  0.551
      uniform (τ = ∞)          0.691  0.530  0.431  0.398  0.446  0.575
    D = 8 (N = 8000)
      absolute τ = 0.1         0.989  0.989  0.988  0.988  0.988  0.988
      absolute τ = 1           0.937  0.811  0.728  0.693  0.699  0.732
      relative τ = 0.3         0.858  0.846  0.808  0.739  0.720  0.785
      relative τ = 1           0.965  0.811  0.725  0.721  0.795  0.937
      uniform (τ = ∞)          0.985  0.824  0.749  0.755  0.839  0.996
    global sample covariance (homoscedastic): 2.333 (D = 4), 2.700 (D = 8)

Errors fall with ``k`` (less sampling noise) until the neighbourhood spans visibly different covariances and
conditional means (bias); ``k = 64`` is at or next to the minimum in every row. A relative ``τ = 1`` matches
the best absolute temperature without depending on the input dimension.

The ablation scores the ``targets`` scheme; every scheme is scored against the truth for ``D`` = 4 to 20
and several ``k`` in ``benchmarks/results/pseudolabels.md``.

Cost: the neighbours come from the index of :mod:`covserve.training.neighbour_search` (the exact search is
``O(N² M)`` in blocks of query rows × candidate rows; a k-d tree or FAISS for large ``N``); the labels
take ``O(N k D²)`` (``local-linear``: ``O(N k M (M + D) + N M³)``) and ``O(N D³)`` for their roots, in
blocks of query rows. Memory, never ``O(N²)``:

* the neighbourhoods, ``16 N k + 8 N M`` bytes (1.1 GB at N = 1 000 000, k = 64, M = 8; 4.1 GB at the
  ``residuals`` default k = 256), plus the index's own (the k-d tree about ``8 N M``, FAISS ``N (M + 260)``);
* the labels in float32, ``4 N D`` for the mean plus ``4 N D²`` per kept ``(N, D, D)`` part
  (:class:`PseudoLabels`; the W2 bound keeps the covariance alone: 16 MB at N = 1 000 000, D = 4, and
  1.6 GB at D = 20);
* block temporaries bounded by ``chunk_elements`` (and, for ``residuals``, the residuals' outer products,
  ``8 N D(D + 1)/2`` bytes: 1.7 GB at N = 1 000 000, D = 20).

Measured at N = 1 000 000, M = 8, k = 64, D = 4 with the k-d tree: 1.73 GiB peak resident memory for the
whole process (``benchmarks/results/pseudolabels.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from covserve.training.neighbour_search import (
    DEFAULT_CHUNK_ELEMENTS,
    DEFAULT_TILE_COLUMNS,
    NeighbourIndex,
    SearchReport,
    search,
)
from covserve.training.numerics import (
    INPUT_METRIC_RIDGE,
    LOCAL_LINEAR_DOF_FLOOR,
    LOCAL_LINEAR_RIDGE,
    PSEUDO_LABEL_JITTER,
)
from covserve.training.options import (
    DEFAULT_NEIGHBOURS,
    DEFAULT_RESIDUAL_NEIGHBOURS,
    DEFAULT_TEMPERATURE,
    LabelScheme,
    default_neighbours,
    parse_label_scheme,
)

__all__ = [
    "ALL_PARTS",
    "DEFAULT_CHUNK_ELEMENTS",
    "DEFAULT_NEIGHBOURS",
    "DEFAULT_RESIDUAL_NEIGHBOURS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TILE_COLUMNS",
    "LabelPart",
    "LabelScheme",
    "NeighbourIndex",
    "Neighbourhoods",
    "PseudoLabels",
    "TemperatureScale",
    "compute_pseudo_labels",
    "default_neighbours",
    "find_neighbourhoods",
    "labels_from_neighbourhoods",
    "local_linear_labels",
    "mahalanobis_whitening",
    "parse_label_scheme",
    "residual_labels",
    "target_labels",
]


class TemperatureScale(str, Enum):
    """What the temperature ``τ`` multiplies in ``softmax(−d / (τ · scale))``."""

    RELATIVE = "relative"
    """``scale = d̄ᵢ``, the query's mean squared neighbour distance: independent of ``M`` and ``N``."""
    ABSOLUTE = "absolute"
    """``scale = 1``: the printed Algorithm 1 (with ``τ = 1``), for paper comparisons."""


class LabelPart(str, Enum):
    """A per-sample matrix or scalar that a loss reads from the labels (besides ``mean``)."""

    COVARIANCE = "covariance"
    """``Σ̃`` ``(N, D, D)``."""
    ROOT = "root"
    """``Σ̃^{½}`` ``(N, D, D)``, the symmetric square root."""
    LOG_DET = "log_det"
    """``log det Σ̃`` ``(N,)``."""


ALL_PARTS = frozenset(LabelPart)


class PseudoLabels:
    """Per-sample pseudo-labels, all in target units: ``mean`` ``(N, D)``, and of ``covariance`` ``(N, D, D)``
    (SPD), ``root`` ``(N, D, D)`` (its symmetric square root) and ``log_det`` ``(N,)`` the parts that were
    kept (:class:`LabelPart`); reading one that was not raises ``ValueError`` naming it.

    Memory ``4 N (D + D² · matrices + scalars)`` bytes in float32: at N = 1 000 000 and D = 20 each
    ``(N, D, D)`` part is 1.6 GB, so a run keeps what its loss reads (the W2 bound: the covariance alone,
    1.68 GB with the mean; all parts: 3.3 GB).
    """

    def __init__(
        self, mean: Tensor, covariance: Tensor | None, root: Tensor | None, log_det: Tensor | None
    ) -> None:
        self.mean = mean
        self._parts = {LabelPart.COVARIANCE: covariance, LabelPart.ROOT: root, LabelPart.LOG_DET: log_det}

    def _part(self, part: LabelPart) -> Tensor:
        value = self._parts[part]
        if value is None:
            kept = ", ".join(sorted(p.value for p in self.parts)) or "none"
            raise ValueError(f"these pseudo-labels do not keep their {part.value} (kept: {kept})")
        return value

    @property
    def covariance(self) -> Tensor:
        """``Σ̃`` ``(N, D, D)``."""
        return self._part(LabelPart.COVARIANCE)

    @property
    def root(self) -> Tensor:
        """``Σ̃^{½}`` ``(N, D, D)``."""
        return self._part(LabelPart.ROOT)

    @property
    def log_det(self) -> Tensor:
        """``log det Σ̃`` ``(N,)``."""
        return self._part(LabelPart.LOG_DET)

    @property
    def parts(self) -> frozenset[LabelPart]:
        """The parts these labels keep."""
        return frozenset(part for part, value in self._parts.items() if value is not None)

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def select(self, index: Tensor) -> PseudoLabels:
        """The labels of the samples in ``index`` (a batch), same layout and parts."""
        return self._map(lambda tensor: tensor[index])

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> PseudoLabels:
        """A copy in ``dtype`` on ``device``."""
        return self._map(lambda tensor: tensor.to(dtype=dtype, device=device))

    def _map(self, change: Callable[[Tensor], Tensor]) -> PseudoLabels:
        covariance, root, log_det = (
            None if value is None else change(value) for value in self._parts.values()
        )
        return PseudoLabels(change(self.mean), covariance, root, log_det)


def mahalanobis_whitening(inputs: Tensor) -> Tensor:
    """``W`` ``(M, M)`` such that ``‖(xᵢ − xⱼ) W‖² = (xᵢ − xⱼ)ᵀ Cov(X)⁻¹ (xᵢ − xⱼ)``.

    ``Cov(X)`` gets a ridge of :data:`INPUT_METRIC_RIDGE` times its mean variance so constant or collinear
    input columns (UCI naval has two) do not make it singular.
    """
    centred = inputs - inputs.mean(dim=0)
    covariance = centred.T @ centred / max(inputs.shape[0] - 1, 1)
    scale = torch.diagonal(covariance).mean().clamp_min(torch.finfo(inputs.dtype).tiny)
    ridge = INPUT_METRIC_RIDGE * scale * torch.eye(inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
    cholesky = torch.linalg.cholesky(covariance + ridge)
    identity = torch.eye(inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
    inverse: Tensor = torch.linalg.solve_triangular(cholesky, identity, upper=False)
    return inverse.T


def _validate_search(inputs: Tensor, neighbours: int, temperature: float, include_self: bool) -> None:
    if inputs.ndim != 2:
        raise ValueError(f"inputs: expected shape (N, M), got {tuple(inputs.shape)}")
    available = inputs.shape[0] - (0 if include_self else 1)
    if not 2 <= neighbours <= available:
        raise ValueError(f"neighbours: expected an integer in [2, {available}], got {neighbours}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number (or inf), got {temperature}")


@dataclass(frozen=True)
class Neighbourhoods:
    """The ``k`` nearest training rows of every training row and their softmax weights.

    ``index`` ``(N, k)`` int64 row numbers (ascending within each row, the layout of a CSR matrix),
    ``weights`` ``(N, k)`` float64 rows that sum to 1, ``whitened`` ``(N, M)`` float64 inputs in the
    Mahalanobis metric (``‖zᵢ − zⱼ‖² = dᵢⱼ``). Memory ``16 N k + 8 N M`` bytes (1.1 GB at
    N = 1 000 000, k = 64). Computed once per run: every label scheme and every refresh reuses them.
    """

    index: Tensor
    weights: Tensor
    whitened: Tensor
    search: SearchReport | None = None
    """How the neighbours were found (``None`` when built by hand)."""

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def weight_matrix(self, rows: slice | None = None) -> Tensor:
        """The weights of ``rows`` (default all) as a sparse ``(rows, N)`` CSR matrix (row ``i`` holds
        ``wᵢⱼ`` at the columns ``j`` of its neighbours), so ``matrix @ values`` is each of those
        neighbourhoods' weighted sum of ``values``."""
        index, weights = self.index[rows or slice(None)], self.weights[rows or slice(None)]
        count, neighbours = index.shape
        crow = torch.arange(0, count * neighbours + 1, neighbours, device=index.device)
        with warnings.catch_warnings():  # torch warns on every CSR construction that the layout is beta
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                crow,
                index.reshape(-1),
                weights.reshape(-1),
                size=(count, len(self.whitened)),
                check_invariants=False,
            )


def _temperature_is_relative(temperature_scale: TemperatureScale | str) -> bool:
    try:
        return TemperatureScale(temperature_scale) is TemperatureScale.RELATIVE
    except ValueError:
        valid = ", ".join(s.value for s in TemperatureScale)
        raise ValueError(f"temperature_scale: expected one of {valid}, got {temperature_scale!r}") from None


def find_neighbourhoods(
    inputs: Tensor,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    temperature: float = DEFAULT_TEMPERATURE,
    temperature_scale: TemperatureScale | str = TemperatureScale.RELATIVE,
    include_self: bool = True,
    index: NeighbourIndex | str = NeighbourIndex.AUTO,
    threads: int = 1,
    rows: slice | None = None,
    seed: int = 0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    tile_columns: int = DEFAULT_TILE_COLUMNS,
) -> Neighbourhoods:
    """The Mahalanobis neighbourhoods of the rows ``rows`` (default all) of ``inputs`` ``(N, M)``, in float64.

    ``index`` chooses the search (:mod:`covserve.training.neighbour_search`; ``threads`` are its workers,
    ``seed`` draws its recall samples). The exact search computes distances in blocks of ``chunk`` query
    rows × ``tile_columns`` candidate rows holding at most ``chunk_elements`` entries; the result does not
    depend on either. With ``rows``, ``index`` and ``weights`` hold those rows only (one share of a
    distributed run), ``whitened`` every row.
    """
    _validate_search(inputs, neighbours, temperature, include_self)
    relative = _temperature_is_relative(temperature_scale)
    x = inputs.to(torch.float64)
    whitened = (x - x.mean(dim=0)) @ mahalanobis_whitening(x)
    start, stop, _ = (rows or slice(None)).indices(x.shape[0])
    found = search(
        whitened,
        torch.arange(start, stop, device=x.device),
        neighbours,
        include_self=include_self,
        index=index,
        threads=threads,
        seed=seed,
        chunk_elements=chunk_elements,
        tile_columns=tile_columns,
    )
    nearest, weights = found.index, found.squared  # the distances become the weights, block by block
    chunk = max(1, chunk_elements // neighbours)
    for start in range(0, len(nearest), chunk):
        block = slice(start, start + chunk)
        squared = weights[block]
        scale = (
            squared.mean(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny) if relative else 1.0
        )
        ordered, order = torch.sort(nearest[block], dim=1)
        nearest[block] = ordered
        weights[block] = torch.softmax(-squared / (temperature * scale), dim=1).gather(1, order)
    return Neighbourhoods(nearest, weights, whitened, found.report)


def _label_jitter(targets: Tensor) -> float:
    """:data:`PSEUDO_LABEL_JITTER` times the mean target variance (absolute for constant targets)."""
    target_scale = float(targets.var(dim=0).mean()) if targets.shape[0] > 1 else 0.0
    return PSEUDO_LABEL_JITTER * (target_scale if target_scale > 0.0 else 1.0)


def _label_chunk(neighbourhoods: Neighbourhoods, width: int, chunk_elements: int) -> int:
    """Query rows per label block so that a ``(rows, k, width)`` gather holds at most ``chunk_elements``."""
    neighbours = int(neighbourhoods.index.shape[1])
    return max(1, min(len(neighbourhoods), chunk_elements // max(1, neighbours * width)))


class _LabelWriter:
    """Labels written block by block: float64 means and covariances of some rows in, the jitter ridge, the
    symmetric roots and log-determinants of the kept ``parts`` out, in ``dtype``; temporaries are a
    block's (the roots' eigendecompositions never hold all ``N`` rows at once)."""

    def __init__(
        self,
        count: int,
        dim: int,
        jitter: float,
        dtype: torch.dtype,
        device: torch.device,
        parts: frozenset[LabelPart],
    ) -> None:
        self.jitter = jitter
        self.mean = torch.empty(count, dim, dtype=dtype, device=device)
        matrix = (count, dim, dim)
        self.covariance = (
            torch.empty(matrix, dtype=dtype, device=device) if LabelPart.COVARIANCE in parts else None
        )
        self.root = torch.empty(matrix, dtype=dtype, device=device) if LabelPart.ROOT in parts else None
        self.log_det = torch.empty(count, dtype=dtype, device=device) if LabelPart.LOG_DET in parts else None

    def write(self, rows: slice, means: Tensor, covariances: Tensor) -> None:
        """The labels of ``rows`` from their float64 ``means`` ``(c, D)``, ``covariances`` ``(c, D, D)``."""
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        covariances = covariances + self.jitter * eye
        covariances = 0.5 * (covariances + covariances.mT)
        self.mean[rows] = means
        if self.covariance is not None:
            self.covariance[rows] = covariances
        if self.root is None and self.log_det is None:
            return
        eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
        eigenvalues = eigenvalues.clamp_min(self.jitter)
        if self.root is not None:
            roots = (eigenvectors * eigenvalues.sqrt().unsqueeze(-2)) @ eigenvectors.mT
            self.root[rows] = 0.5 * (roots + roots.mT)
        if self.log_det is not None:
            self.log_det[rows] = eigenvalues.log().sum(dim=-1)

    def labels(self) -> PseudoLabels:
        return PseudoLabels(self.mean, self.covariance, self.root, self.log_det)


def _check_values(neighbourhoods: Neighbourhoods, values: Tensor, name: str) -> None:
    if values.ndim != 2 or values.shape[0] != len(neighbourhoods):
        raise ValueError(
            f"{name}: expected shape ({len(neighbourhoods)}, D) to match the neighbourhoods, "
            f"got {tuple(values.shape)}"
        )


def target_labels(
    neighbourhoods: Neighbourhoods,
    targets: Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    parts: frozenset[LabelPart] = ALL_PARTS,
) -> PseudoLabels:
    """``targets`` scheme (Algorithm 1): the weighted covariance of the neighbours' targets ``(N, D)``
    around their weighted mean. Time ``O(N k D²)``, memory ``O(chunk_elements + N D²)``."""
    _check_values(neighbourhoods, targets, "targets")
    y = targets.to(torch.float64)
    count, dim = y.shape
    output = _LabelWriter(count, dim, _label_jitter(y), targets.dtype, y.device, parts)
    chunk = _label_chunk(neighbourhoods, dim, chunk_elements)
    for start in range(0, count, chunk):
        rows = slice(start, min(start + chunk, count))
        weights = neighbourhoods.weights[rows]
        neighbour_targets = y[neighbourhoods.index[rows]]
        mean = torch.einsum("ck,ckd->cd", weights, neighbour_targets)
        centred = neighbour_targets - mean[:, None, :]
        output.write(rows, mean, torch.einsum("ck,ckd,cke->cde", weights, centred, centred))
    return output.labels()


def residual_labels(
    neighbourhoods: Neighbourhoods,
    targets: Tensor,
    predictions: Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    parts: frozenset[LabelPart] = ALL_PARTS,
) -> PseudoLabels:
    """``residuals`` scheme: ``Σ̃ᵢ = Σⱼ wᵢⱼ rⱼ rⱼᵀ`` with ``rⱼ = yⱼ − μ̂(xⱼ)``, the weighted second moment of
    the neighbours' residuals under the current mean ``predictions`` ``(N, D)``.

    Not re-centred: where the mean is right the residuals average to zero and the second moment is an
    unbiased estimate of Σ(x) (the centred one is biased low by ``1 − Σⱼ wᵢⱼ²``); where it is wrong, the
    local bias is the model's own error, which the predicted covariance should carry. The label's ``mean``
    is ``μ̂(xᵢ) + Σⱼ wᵢⱼ rⱼ``. One sparse ``(N, N) × (N, D(D + 1)/2)`` product over the upper triangles of
    ``rⱼ rⱼᵀ``: time ``O(N k D²)``, no neighbour search, no ``(N, k, D)`` gather (8× faster than one at
    N = 6 400, k = 256, D = 8), memory ``O(N k + N D²)``: the products are ``8 N D(D + 1)/2`` bytes
    (1.7 GB at N = 1 000 000, D = 20), the rest is computed in blocks of query rows.
    """
    _check_values(neighbourhoods, targets, "targets")
    _check_values(neighbourhoods, predictions, "predictions")
    y = targets.to(torch.float64)
    mean = predictions.to(torch.float64)
    residuals = y - mean
    count, dim = y.shape
    output = _LabelWriter(count, dim, _label_jitter(y), targets.dtype, y.device, parts)
    upper, lower = torch.triu_indices(dim, dim, device=y.device)
    products = residuals[:, upper] * residuals[:, lower]
    chunk = _label_chunk(neighbourhoods, dim, chunk_elements)
    for start in range(0, count, chunk):
        rows = slice(start, min(start + chunk, count))
        matrix = neighbourhoods.weight_matrix(rows)
        moments = matrix @ products
        covariances = torch.empty(len(moments), dim, dim, dtype=torch.float64, device=y.device)
        covariances[:, upper, lower] = moments
        covariances[:, lower, upper] = moments
        output.write(rows, mean[rows] + matrix @ residuals, covariances)
    return output.labels()


def local_linear_labels(
    neighbourhoods: Neighbourhoods,
    targets: Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    parts: frozenset[LabelPart] = ALL_PARTS,
) -> PseudoLabels:
    """``local-linear`` scheme: the residual covariance of a weighted linear fit inside each neighbourhood.

    With ``Xᵢ`` ``(k, p)`` the rows ``[1, zⱼ − zᵢ]`` of the whitened neighbours (``p = M + 1``), ``W``
    their weights and ``Yᵢ`` ``(k, D)`` their targets, ``B = (XᵀWX + R)⁻¹ XᵀWY`` (``R`` the ridge
    :data:`LOCAL_LINEAR_RIDGE` on the slopes), ``E = Y − X B`` and::

        Σ̃ᵢ = Eᵀ W E / cᵢ,    cᵢ = 1 − tr((XᵀWX + R)⁻¹ XᵀW²X)

    ``cᵢ`` is the residual degrees of freedom: for homoscedastic noise ``E[EᵀWE] = cᵢ Σ`` exactly when
    ``R = 0`` (with uniform weights ``cᵢ = (k − p) / k``, the textbook correction); it is floored at
    :data:`LOCAL_LINEAR_DOF_FLOOR`. This is local-linear variance estimation (Fan & Yao, *Biometrika* 1998;
    Ruppert et al., *Technometrics* 1997) for a full covariance: the mean's first-order variation across
    the neighbourhood, which inflates Algorithm 1's label, is removed without a network. The label's
    ``mean`` is the fit at ``xᵢ`` (the intercept). Needs ``k ≥ M + 2``. Time ``O(N k M (M + D) + N M³)``.
    """
    _check_values(neighbourhoods, targets, "targets")
    index, whitened = neighbourhoods.index, neighbourhoods.whitened
    neighbours, inputs = int(index.shape[1]), int(whitened.shape[1])
    if neighbours < inputs + 2:
        raise ValueError(
            f"neighbours: the local-linear labels fit {inputs + 1} coefficients per neighbourhood and need "
            f"at least {inputs + 2} neighbours, got {neighbours}"
        )
    y = targets.to(torch.float64)
    count, dim = y.shape
    output = _LabelWriter(count, dim, _label_jitter(y), targets.dtype, y.device, parts)
    ridge_mask = torch.ones(inputs + 1, dtype=torch.float64, device=y.device)
    ridge_mask[0] = 0.0
    chunk = _label_chunk(neighbourhoods, inputs + 1 + dim, chunk_elements)
    for start in range(0, count, chunk):
        rows = slice(start, min(start + chunk, count))
        weights = neighbourhoods.weights[rows]
        offsets = whitened[index[rows]] - whitened[rows, None, :]
        design = torch.cat([torch.ones_like(offsets[..., :1]), offsets], dim=2)
        weighted = design * weights[..., None]
        gram = design.mT @ weighted
        slope_scale = (
            torch.diagonal(gram, dim1=-2, dim2=-1)[:, 1:]
            .mean(dim=1)
            .clamp_min(torch.finfo(torch.float64).tiny)
        )
        gram = gram + torch.diag_embed(LOCAL_LINEAR_RIDGE * slope_scale[:, None] * ridge_mask)
        factor = torch.linalg.cholesky(gram)
        neighbour_targets = y[index[rows]]
        coefficients = torch.cholesky_solve(weighted.mT @ neighbour_targets, factor)
        errors = neighbour_targets - design @ coefficients
        leverage = torch.cholesky_solve(weighted.mT @ weighted, factor)
        dof = (1.0 - torch.diagonal(leverage, dim1=-2, dim2=-1).sum(dim=1)).clamp_min(LOCAL_LINEAR_DOF_FLOOR)
        covariances = torch.einsum("ck,ckd,cke->cde", weights, errors, errors) / dof[:, None, None]
        output.write(rows, coefficients[:, 0, :], covariances)
    return output.labels()


def compute_pseudo_labels(
    inputs: Tensor,
    targets: Tensor,
    *,
    scheme: LabelScheme | str = LabelScheme.TARGETS,
    predictions: Tensor | None = None,
    neighbours: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    temperature_scale: TemperatureScale | str = TemperatureScale.RELATIVE,
    include_self: bool = True,
    index: NeighbourIndex | str = NeighbourIndex.AUTO,
    threads: int = 1,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    tile_columns: int = DEFAULT_TILE_COLUMNS,
) -> PseudoLabels:
    """Labels of ``scheme`` for every row of ``inputs`` ``(N, M)`` with ``targets`` ``(N, D)``:
    :func:`find_neighbourhoods`, then :func:`labels_from_neighbourhoods`.

    ``predictions`` ``(N, D)`` is the current mean ``μ̂(x)`` (``residuals`` only); ``neighbours`` defaults
    to the scheme's (:func:`default_neighbours`); ``index`` and ``threads`` choose the neighbour search
    (:func:`find_neighbourhoods`). Computed in float64 and returned in the dtype of
    ``targets``.
    """
    if inputs.ndim != 2 or targets.ndim != 2:
        raise ValueError(
            f"inputs, targets: expected shapes (N, M) and (N, D), got {tuple(inputs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"targets: expected {inputs.shape[0]} rows to match inputs, got {targets.shape[0]}")
    neighbourhoods = find_neighbourhoods(
        inputs,
        neighbours=default_neighbours(scheme) if neighbours is None else neighbours,
        temperature=temperature,
        temperature_scale=temperature_scale,
        include_self=include_self,
        index=index,
        threads=threads,
        chunk_elements=chunk_elements,
        tile_columns=tile_columns,
    )
    return labels_from_neighbourhoods(
        neighbourhoods, targets, scheme, predictions=predictions, chunk_elements=chunk_elements
    )


def labels_from_neighbourhoods(
    neighbourhoods: Neighbourhoods,
    targets: Tensor,
    scheme: LabelScheme | str,
    *,
    predictions: Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    parts: frozenset[LabelPart] = ALL_PARTS,
) -> PseudoLabels:
    """The labels of ``scheme`` over precomputed ``neighbourhoods``, keeping ``parts``; ``predictions``
    ``(N, D)`` is the current mean (required by ``residuals``, refused by the others)."""
    scheme = parse_label_scheme(scheme)
    if (predictions is None) == (scheme is LabelScheme.RESIDUALS):
        needs = "needs" if scheme is LabelScheme.RESIDUALS else "takes no"
        raise ValueError(f"predictions: the {scheme.value} scheme {needs} mean predictions")
    if predictions is not None:
        return residual_labels(
            neighbourhoods, targets, predictions, chunk_elements=chunk_elements, parts=parts
        )
    if scheme is LabelScheme.LOCAL_LINEAR:
        return local_linear_labels(neighbourhoods, targets, chunk_elements=chunk_elements, parts=parts)
    return target_labels(neighbourhoods, targets, chunk_elements=chunk_elements, parts=parts)

"""The names of the training options and their defaults: ``str`` enums that accept plain strings.

Importable without torch, so the command line and the run configuration can parse and check every option
before the trainer's heavy imports load (``covserve-train --help`` answers in well under a second).
:mod:`covserve.training.losses` and :mod:`covserve.training.pseudolabels` re-export these names.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = [
    "DEFAULT_NEIGHBOURS",
    "DEFAULT_RESIDUAL_NEIGHBOURS",
    "DEFAULT_TEMPERATURE",
    "NGBOOST_ESTIMATORS",
    "LabelScheme",
    "LossName",
    "NeighbourIndex",
    "default_neighbours",
    "parse_label_scheme",
    "parse_neighbour_index",
]

_Option = TypeVar("_Option", bound=Enum)

DEFAULT_NEIGHBOURS = 64
"""``k`` of the ``targets`` scheme (its ablation: :mod:`covserve.training.pseudolabels`)."""

DEFAULT_RESIDUAL_NEIGHBOURS = 256
"""``k`` of the ``residuals`` and ``local-linear`` schemes. With the mean's variation taken out, a wider
neighbourhood no longer inflates the label, so more neighbours keep lowering its error on the synthetic
generator (``benchmarks/results/label_schemes.md``, D = 20, residuals of a trained MSE mean: 0.352 at
k = 128, 0.257 at 256, 0.193 at 512; ``targets`` is at best 2.65, at k = 16). 256 rather than 512: the
trained bound gained most from it in a one-off run with the synthetic benchmark's settings (D = 8,
trial 0, KL to the truth: w2-bound with residuals 0.286 at k = 64 and 0.201 at 256, the hybrid with
local-linear labels 0.256 and 0.138), and local-linear's cost grows with k (4 s at D = 20 for k = 512)."""

NGBOOST_ESTIMATORS = 500
"""NGBoost's boosting rounds in ``covserve-train compare`` and the UCI benchmark (early-stopped on the
validation rows)."""

DEFAULT_TEMPERATURE = 1.0
"""``τ`` of ``softmax(−d / (τ d̄))``, relative to each query's mean neighbour distance ``d̄``
(``math.inf`` gives uniform weights, small values approach the nearest neighbour alone)."""


class LossName(str, Enum):
    """The registered losses; plain strings such as ``"w2-bound"`` are accepted wherever this is."""

    MSE = "mse"
    NLL = "nll"
    DIAGONAL = "diagonal"
    BETA_NLL = "beta-nll"
    FAITHFUL = "faithful"
    KL = "kl"
    W2 = "w2"
    W2_BOUND = "w2-bound"
    NLL_TIC = "nll-tic"


class LabelScheme(str, Enum):
    """What the label of a neighbourhood measures; plain strings such as ``"residuals"`` are accepted."""

    TARGETS = "targets"
    """Algorithm 1: the spread of the neighbours' targets around their weighted mean (the paper)."""
    RESIDUALS = "residuals"
    """The second moment of the neighbours' residuals ``y − μ̂(x)`` under the current mean network."""
    LOCAL_LINEAR = "local-linear"
    """The residual covariance of a weighted linear fit of ``y`` on ``x`` inside the neighbourhood."""


def default_neighbours(scheme: LabelScheme | str) -> int:
    """The ``k`` a scheme uses unless one is given: :data:`DEFAULT_NEIGHBOURS` for ``targets``,
    :data:`DEFAULT_RESIDUAL_NEIGHBOURS` for the schemes that remove the mean's variation."""
    if parse_label_scheme(scheme) is LabelScheme.TARGETS:
        return DEFAULT_NEIGHBOURS
    return DEFAULT_RESIDUAL_NEIGHBOURS


def _parse(kind: type[_Option], value: _Option | str, name: str) -> _Option:
    """``value`` as a member of ``kind``; ``ValueError`` naming ``name`` and listing the valid values."""
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(member.value for member in kind)
        raise ValueError(f"{name}: expected one of {valid}, got {value!r}") from None


def parse_label_scheme(scheme: LabelScheme | str) -> LabelScheme:
    """``scheme`` as a :class:`LabelScheme`; ``ValueError`` listing the valid names otherwise."""
    return _parse(LabelScheme, scheme, "scheme")


class NeighbourIndex(str, Enum):
    """How the pseudo-labels' neighbours are searched; plain strings such as ``"faiss"`` are accepted."""

    AUTO = "auto"
    """Chosen from the number of rows and inputs (:func:`covserve.training.neighbour_search.choose_index`)."""
    EXACT = "exact"
    """Every pair's distance in blocked matrix products: the reference, ``O(N² M)``."""
    KDTREE = "kdtree"
    """``scipy.spatial.cKDTree``: exact, fast for few inputs."""
    FAISS = "faiss"
    """A FAISS HNSW graph: approximate, its recall measured on a sample at every run."""


def parse_neighbour_index(index: NeighbourIndex | str) -> NeighbourIndex:
    """``index`` as a :class:`NeighbourIndex`; ``ValueError`` listing the valid names otherwise."""
    return _parse(NeighbourIndex, index, "neighbour index")

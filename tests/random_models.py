"""Untrained models whose covariance varies with the input, for export and serving tests."""

from __future__ import annotations

from torch import nn

from covserve.training.covariance import CovarianceKind
from covserve.training.networks import CovarianceModel, Standardisation


def random_model(
    in_dim: int,
    out_dim: int,
    kind: CovarianceKind | str,
    standardisation: Standardisation,
    *,
    width: int,
    depth: int,
) -> CovarianceModel:
    """A :class:`CovarianceModel` whose covariance output layer is re-drawn with PyTorch's default init.

    A fresh model starts at ``Σ(x) = I`` for every input; tests of export and serving need a covariance that
    depends on ``x``, as a trained model's does, or a wrong graph could pass them.
    """
    model = CovarianceModel(in_dim, out_dim, kind, standardisation, width=width, depth=depth)
    output = model.covariance_network.network[-1]
    assert isinstance(output, nn.Linear)
    output.reset_parameters()
    return model

"""covserve training: the covariance core (parameterisations, losses, pseudo-labels, metrics) in PyTorch.

The public surface is re-exported here; ``covserve.training.metrics`` (numpy) and
``covserve.training.synthetic`` (data generators) are imported as modules.
"""

from covserve import __version__
from covserve.training.covariance import (
    CovarianceKind,
    FactoredCovariance,
    Parameterisation,
    TaylorTerms,
    make_parameterisation,
    taylor_terms,
)
from covserve.training.losses import LossName, LossSpec, get_loss
from covserve.training.pseudolabels import LabelScheme, PseudoLabels, compute_pseudo_labels

__all__ = [
    "CovarianceKind",
    "FactoredCovariance",
    "LabelScheme",
    "LossName",
    "LossSpec",
    "Parameterisation",
    "PseudoLabels",
    "TaylorTerms",
    "__version__",
    "compute_pseudo_labels",
    "get_loss",
    "make_parameterisation",
    "taylor_terms",
]

"""covserve training: the covariance core (parameterisations, losses, pseudo-labels, metrics) in PyTorch.

The public surface is re-exported here; ``training.metrics`` (numpy) and ``training.synthetic`` (data
generators) are imported as modules.
"""

from importlib.metadata import version

from training.covariance import (
    CovarianceKind,
    FactoredCovariance,
    Parameterisation,
    TaylorTerms,
    make_parameterisation,
    taylor_terms,
)
from training.losses import LossName, LossSpec, get_loss
from training.pseudolabels import LabelScheme, PseudoLabels, compute_pseudo_labels

__version__ = version("covserve")

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

"""covserve training: the covariance core (parameterisations, losses, pseudo-labels, metrics) in PyTorch.

The public surface is re-exported here; ``covserve.training.metrics`` (numpy) and
``covserve.training.synthetic`` (data generators) are imported as modules. Names that need torch load on
first use, so importing ``covserve.training.cli`` or ``covserve.training.config`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covserve import __version__
from covserve._lazy import lazy_attributes
from covserve.training.options import LabelScheme, LossName

if TYPE_CHECKING:
    from covserve.training.covariance import (
        CovarianceKind,
        FactoredCovariance,
        Parameterisation,
        TaylorTerms,
        make_parameterisation,
        taylor_terms,
    )
    from covserve.training.losses import LossSpec, get_loss
    from covserve.training.pseudolabels import PseudoLabels, compute_pseudo_labels

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

_TORCH_NAMES = {
    "covserve.training.covariance": (
        "CovarianceKind",
        "FactoredCovariance",
        "Parameterisation",
        "TaylorTerms",
        "make_parameterisation",
        "taylor_terms",
    ),
    "covserve.training.losses": ("LossSpec", "get_loss"),
    "covserve.training.pseudolabels": ("PseudoLabels", "compute_pseudo_labels"),
}
_MODULE_OF = {name: module for module, names in _TORCH_NAMES.items() for name in names}


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF, globals(), __all__)

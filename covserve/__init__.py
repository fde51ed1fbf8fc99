"""covserve: learn input-dependent full covariance for multivariate regression, and serve it.

Two packages, one each side of the model repository: :mod:`covserve.training` (PyTorch, the
``train`` extra) writes ``models/<name>/<version>/``, :mod:`covserve.service` (ONNX Runtime, never
torch) serves it. The names users reach for first are here, each imported on first use so that
``import covserve`` loads neither torch nor the service:

* :class:`CovarianceRegressor`: training as a scikit-learn estimator (the ``train`` extra);
* :class:`Client` and :class:`AsyncClient`: the typed HTTP client of a covserve server;
* :class:`PredictiveDistribution`: what both return for a batch of rows (mean, covariance, ``logpdf``,
  ``sample``, ``interval``, ``condition``).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING

from covserve._lazy import lazy_attributes

if TYPE_CHECKING:
    from covserve.client import AsyncClient, Client
    from covserve.distribution import PredictiveDistribution
    from covserve.training.estimator import CovarianceRegressor

__version__ = version("covserve")

__all__ = ["AsyncClient", "Client", "CovarianceRegressor", "PredictiveDistribution", "__version__"]

_MODULE_OF = {
    "AsyncClient": "covserve.client",
    "Client": "covserve.client",
    "CovarianceRegressor": "covserve.training.estimator",
    "PredictiveDistribution": "covserve.distribution",
}


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF, globals(), __all__)

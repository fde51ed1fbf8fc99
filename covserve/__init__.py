"""covserve: learn input-dependent full covariance for multivariate regression, and serve it.

Two packages, one each side of the model repository: :mod:`covserve.training` (PyTorch, the
``train`` extra) writes ``models/<name>/<version>/``, :mod:`covserve.service` (ONNX Runtime, never
torch) serves it. This module imports neither.
"""

from importlib.metadata import version

__version__ = version("covserve")

__all__ = ["__version__"]

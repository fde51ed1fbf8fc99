"""covserve service: the online half (ONNX Runtime over the model repository). Never imports torch."""

from importlib.metadata import version

__version__ = version("covserve")

__all__ = ["__version__"]

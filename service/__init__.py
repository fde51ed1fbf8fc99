"""covserve service: the online half (ONNX Runtime over the model repository). Never imports torch."""

from service._app import create_app
from service._settings import Settings
from service._version import __version__

__all__ = ["Settings", "__version__", "create_app"]

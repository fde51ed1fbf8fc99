"""covserve service: the online half (ONNX Runtime over the model repository). Never imports torch."""

from covserve import __version__
from covserve.service._app import create_app
from covserve.service._settings import Settings

__all__ = ["Settings", "__version__", "create_app"]

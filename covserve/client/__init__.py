"""The covserve Python client: typed, sync (:class:`Client`) and asyncio (:class:`AsyncClient`), over httpx.

::

    from covserve.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        prediction = client.predict([[1.96, 3.47, 2.18, 2.25]])      # the server's only model, or model=
        prediction.mean, prediction.covariance                       # numpy arrays (1, 4), (1, 4, 4)
        prediction.distribution.interval(0.9)                        # a covserve.PredictiveDistribution
        client.condition([[1.96, 3.47, 2.18, 2.25]], {"y1": -2.7})   # the other targets given y1

Large batches travel as Open Inference Protocol binary tensors (``transport="auto"``). A 503 (the server
is full) is retried with backoff, honouring ``Retry-After``; every other error status raises its
:class:`HTTPStatusError` subclass at once, with the server's message. Imports neither torch nor the service.
"""

from covserve.client._async import AsyncClient
from covserve.client._errors import (
    AuthenticationError,
    BadRequestError,
    CovserveError,
    ForbiddenError,
    HTTPStatusError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    ServiceUnavailableError,
    TooLargeError,
    TransportError,
    UnanswerableInputError,
)
from covserve.client._protocol import BINARY_MIN_ROWS, OUTPUT_NAMES, ModelInfo, Prediction, Transport
from covserve.client._sync import Client

__all__ = [
    "BINARY_MIN_ROWS",
    "OUTPUT_NAMES",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "CovserveError",
    "ForbiddenError",
    "HTTPStatusError",
    "ModelInfo",
    "NotFoundError",
    "Prediction",
    "RequestTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "TooLargeError",
    "Transport",
    "TransportError",
    "UnanswerableInputError",
]

"""What the sync and async clients share, without I/O: requests built, responses decoded, retries timed.

Each operation is a :class:`Call` (method, path, body, headers and the function that decodes its answer);
the clients send it with their own ``httpx`` client and retry policy (:class:`Retry`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import Enum
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import httpx
import numpy as np
import orjson
from numpy.typing import ArrayLike, NDArray

from covserve.client._errors import (
    HTTPStatusError,
    NotFoundError,
    ServiceUnavailableError,
    TransportError,
    error_for_status,
)
from covserve.distribution import PredictiveDistribution

__all__ = [
    "BINARY_MIN_ROWS",
    "OUTPUT_NAMES",
    "Call",
    "ClientSettings",
    "ModelInfo",
    "Prediction",
    "Retry",
    "Transport",
    "Wait",
    "choose_transport",
    "condition_call",
    "connection_failed",
    "error_of",
    "latest_info",
    "models_call",
    "only_model",
    "predict_call",
    "ready_call",
    "rows_of",
    "settle",
]

T = TypeVar("T")
Array = NDArray[np.float64]

OUTPUT_NAMES = ("mean", "covariance", "std", "correlation", "scale", "interval", "mahalanobis_ood")
"""What ``predict`` can ask for (the native API's ``outputs``)."""

BINARY_OUTPUTS = frozenset({"mean", "covariance", "scale"})
"""The outputs the Open Inference Protocol route serves (the others exist on the native route only)."""

BINARY_MIN_ROWS = 64
"""``transport="auto"`` sends this many rows or more as OIP binary tensors: JSON's text costs more to write
and parse than the raw float32 bytes once a request holds more than a few rows."""

DEFAULT_LEVEL = 0.9
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
INPUT_NAME = "x"
DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
_MATRIX_NDIM = 2
_VECTOR_NDIM = 1


class Transport(str, Enum):
    """How ``predict`` sends its rows; plain strings such as ``"binary"`` are accepted."""

    AUTO = "auto"
    """OIP binary from :data:`BINARY_MIN_ROWS` rows when every requested output allows it, else JSON."""
    JSON = "json"
    """The native route, ``POST /v1/models/{name}/predict``: every output, human-readable."""
    BINARY = "binary"
    """``POST /v2/models/{name}/infer`` with binary tensors: ``mean``, ``covariance`` and ``scale`` only."""


@dataclass(frozen=True)
class ModelInfo:
    """One served model version, as ``GET /v1/models`` describes it."""

    name: str
    version: int
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    method: str
    labels: str | None
    provider: str
    ready: bool
    test_metrics: dict[str, float]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ModelInfo:
        return cls(
            name=document["name"],
            version=int(document["version"]),
            inputs=tuple(document["inputs"]),
            targets=tuple(document["targets"]),
            method=document["method"],
            labels=document.get("labels"),
            provider=document["provider"],
            ready=bool(document["ready"]),
            test_metrics=dict(document.get("test_metrics") or {}),
        )


@dataclass(frozen=True, eq=False)
class Prediction:
    """What ``predict`` returns: the outputs asked for, as numpy arrays (``None`` when not asked for).

    ``mean`` ``(N, D)``, ``covariance`` ``(N, D, D)``, ``std`` ``(N, D)``, ``correlation`` ``(N, D, D)``,
    ``scale`` ``(N, D, D)``, ``interval`` ``(lower, upper)`` each ``(N, D)`` at ``level``,
    ``mahalanobis_ood`` ``(N,)``; float64, raw units.
    """

    model: str
    version: int
    targets: tuple[str, ...]
    mean: Array | None = None
    covariance: Array | None = None
    std: Array | None = None
    correlation: Array | None = None
    scale: Array | None = None
    interval: tuple[Array, Array] | None = None
    level: float | None = None
    mahalanobis_ood: Array | None = None

    @property
    def distribution(self) -> PredictiveDistribution:
        """The rows' predictive normals (needs ``mean`` and ``covariance`` among the outputs)."""
        if self.mean is None or self.covariance is None:
            raise ValueError("distribution: predict with outputs including 'mean' and 'covariance'")
        return PredictiveDistribution(self.mean, self.covariance, self.targets)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: the request to send and how to read a successful answer."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Retry:
    """When to try again: a 503 or a connection that could not be opened (the request was never sent),
    at most ``attempts`` more times, waiting ``backoff · 2ⁱ`` seconds before retry ``i`` or the server's
    ``Retry-After`` if longer, never more than ``max_wait``. Other statuses are never retried."""

    attempts: int = 3
    backoff: float = 0.1
    max_wait: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"retries: expected a count >= 0, got {self.attempts}")
        if not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise ValueError(f"backoff: expected seconds >= 0, got {self.backoff}")

    def wait(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        return min(self.max_wait, max(self.backoff * 2.0**retry, retry_after or 0.0))


@dataclass(frozen=True)
class ClientSettings:
    """What a client was built with: the server's base ``url`` (``http://`` is assumed without a scheme),
    the default ``model``, the ``api_key``, the per-exchange ``timeout`` in seconds and the ``retry``
    policy."""

    url: str
    model: str | None
    api_key: str | None
    timeout: float
    retry: Retry

    def __post_init__(self) -> None:
        url = self.url if "://" in self.url else f"http://{self.url}"
        object.__setattr__(self, "url", url.rstrip("/"))
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout: expected seconds > 0, got {self.timeout}")

    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <api_key>`` when a key is set."""
        return {} if self.api_key is None else {"Authorization": f"Bearer {self.api_key}"}

    def model_info(self, served: list[ModelInfo], model: str | None, version: int | None) -> ModelInfo:
        """The description of ``model`` (else the default model, else the only served one) at ``version``
        (else its latest) among ``served``."""
        name = model if model is not None else self.model
        return latest_info(served, name if name is not None else only_model(served), version)

    def needs_refresh(self, served: list[ModelInfo] | None, model: str | None) -> bool:
        """Whether ``served`` (the cached ``GET /v1/models``) is missing or does not know ``model``."""
        name = model if model is not None else self.model
        return served is None or (name is not None and all(info.name != name for info in served))


@dataclass(frozen=True)
class Wait:
    """Try the call again after ``seconds``."""

    seconds: float


def settle(call: Call[T], response: httpx.Response, retry: Retry, attempt: int, retries: bool) -> T | Wait:
    """The decoded answer of a successful ``response``; a :class:`Wait` before the next attempt when it is
    a 503 and ``retries`` allows attempt ``attempt + 1``; else the typed error, raised."""
    if response.is_success:
        return call.decode(response)
    failure = error_of(response)
    if isinstance(failure, ServiceUnavailableError) and retries and attempt < retry.attempts:
        return Wait(retry.wait(attempt, failure.retry_after))
    raise failure


def connection_failed(url: str, error: httpx.HTTPError, retry: Retry, attempt: int, retries: bool) -> Wait:
    """A :class:`Wait` before the next attempt when the connection could not be opened (the request was
    never sent) and ``retries`` allows another; else :class:`TransportError`, raised."""
    if isinstance(error, httpx.ConnectError) and retries and attempt < retry.attempts:
        return Wait(retry.wait(attempt, None))
    raise TransportError(f"{url}: {error}") from None


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), ``None`` when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def error_of(response: httpx.Response) -> HTTPStatusError:
    """The typed exception for an error response, carrying the server's ``{"error": ...}`` message."""
    try:
        message = str(orjson.loads(response.content)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = response.text or HTTPStatus(response.status_code).phrase
    return error_for_status(response.status_code, message, _retry_after_seconds(response))


def rows_of(x: ArrayLike) -> NDArray[np.float64]:
    """``x`` as rows ``(N, M)`` of finite float64: one row ``(M,)`` becomes ``(1, M)``."""
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim == _VECTOR_NDIM:
        rows = rows[None, :]
    if rows.ndim != _MATRIX_NDIM or rows.shape[0] == 0:
        raise ValueError(f"x: expected rows of inputs (N, M) with N >= 1, got shape {rows.shape}")
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise ValueError(f"x: row {int(np.argmin(finite))} holds a NaN or an infinity")
    return rows


def _columns(x: ArrayLike) -> list[str] | None:
    columns = getattr(x, "columns", None)
    return [str(column) for column in columns] if columns is not None else None


def _model_path(model: str, version: int | None, api: str) -> str:
    versioned = "" if version is None else f"/versions/{version}"
    return f"/{api}/models/{model}{versioned}"


def models_call() -> Call[list[ModelInfo]]:
    def decode(response: httpx.Response) -> list[ModelInfo]:
        return [ModelInfo.from_document(entry) for entry in orjson.loads(response.content)["models"]]

    return Call("GET", "/v1/models", decode)


def ready_call(model: str | None) -> Call[bool]:
    """The server's readiness (every model loaded), or one model's."""
    path = "/v2/health/ready" if model is None else f"/v2/models/{model}/ready"
    return Call("GET", path, lambda response: response.status_code == HTTPStatus.OK)


def choose_transport(transport: Transport | str, rows: int, outputs: Sequence[str]) -> Transport:
    """``transport`` resolved for ``rows`` rows and ``outputs``; ``ValueError`` for unknown outputs or
    binary with outputs the OIP route does not serve."""
    chosen = Transport(transport)
    if isinstance(outputs, str):
        raise ValueError(f"outputs: expected a list of output names, got the string {outputs!r}")
    unknown = [name for name in outputs if name not in OUTPUT_NAMES]
    if unknown or not outputs:
        raise ValueError(f"outputs: expected some of {list(OUTPUT_NAMES)}, got {list(outputs)}")
    binary_ready = set(outputs) <= BINARY_OUTPUTS
    if chosen is Transport.BINARY and not binary_ready:
        raise ValueError(f"transport 'binary' serves only {sorted(BINARY_OUTPUTS)}, got {list(outputs)}")
    if chosen is Transport.AUTO:
        return Transport.BINARY if binary_ready and rows >= BINARY_MIN_ROWS else Transport.JSON
    return chosen


def predict_call(
    x: ArrayLike,
    rows: NDArray[np.float64],
    info: ModelInfo | None,
    model: str | None,
    version: int | None,
    outputs: Sequence[str],
    level: float,
    transport: Transport,
) -> Call[Prediction]:
    """The predict request of ``x`` (its values as :func:`rows_of` ``rows``; ``x`` is read for DataFrame
    column names) for ``model`` with ``transport`` (already chosen). ``info``, the model's description,
    names the model when ``model`` is ``None`` and is needed for binary (its target names)."""
    columns = _columns(x)
    if info is None and (model is None or transport is Transport.BINARY):
        raise ValueError("predict: binary, or no model name, needs the model's description")
    model = info.name if info is not None else model
    assert model is not None
    if transport is Transport.BINARY:
        assert info is not None
        if columns is not None and tuple(columns) != info.inputs:
            raise ValueError(f"x: columns {columns} differ from the model's inputs {list(info.inputs)}")
        return _binary_call(rows, info, version, outputs)
    body: dict[str, Any] = {"inputs": rows, "outputs": list(outputs), "level": level}
    if columns is not None:
        body["columns"] = columns

    def decode(response: httpx.Response) -> Prediction:
        document = orjson.loads(response.content)
        interval = document["outputs"].pop("interval", None)
        values = {name: np.asarray(value, dtype=np.float64) for name, value in document["outputs"].items()}
        return Prediction(
            model=document["model"],
            version=int(document["version"]),
            targets=tuple(document["targets"]),
            mean=values.get("mean"),
            covariance=values.get("covariance"),
            std=values.get("std"),
            correlation=values.get("correlation"),
            scale=values.get("scale"),
            interval=None
            if interval is None
            else (np.asarray(interval["lower"], np.float64), np.asarray(interval["upper"], np.float64)),
            level=None if interval is None else float(interval["level"]),
            mahalanobis_ood=values.get("mahalanobis_ood"),
        )

    path = _model_path(model, version, "v1") + "/predict"
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Call("POST", path, decode, content, {"Content-Type": JSON_CONTENT_TYPE})


def _binary_call(
    rows: NDArray[np.float64], info: ModelInfo, version: int | None, outputs: Sequence[str]
) -> Call[Prediction]:
    """OIP ``/infer`` with the rows as one binary FP32 tensor and every output asked for as binary."""
    data = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
        }
    )

    def decode(response: httpx.Response) -> Prediction:
        version, tensors = _decode_binary_outputs(response)
        return Prediction(
            model=info.name,
            version=info.version if version is None else version,
            targets=info.targets,
            mean=tensors.get("mean"),
            covariance=tensors.get("covariance"),
            scale=tensors.get("scale"),
        )

    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
    return Call("POST", _model_path(info.name, version, "v2") + "/infer", decode, header + data, headers)


def _decode_binary_outputs(response: httpx.Response) -> tuple[int | None, dict[str, Array]]:
    """The version an OIP response names (``model_version``, ``None`` if it names none) and its outputs
    (binary or JSON ``data``) as float64 arrays of their shapes."""
    content = response.content
    length = int(response.headers.get(HEADER_LENGTH, len(content)))
    document = orjson.loads(content[:length])
    offset = length
    tensors: dict[str, Array] = {}
    for output in document["outputs"]:
        shape = tuple(output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values = np.asarray(output["data"], dtype=np.float64)
        else:
            dtype = DATATYPES[output["datatype"]]
            values = np.frombuffer(content, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        tensors[output["name"]] = values.astype(np.float64).reshape(shape)
    version = document.get("model_version")
    return (int(version) if version else None), tensors


def condition_call(
    x: ArrayLike, observed: Mapping[str | int, ArrayLike], info: ModelInfo
) -> Call[PredictiveDistribution]:
    """``POST /v1/models/{name}/condition`` with the same targets observed on every row; the answer is one
    distribution over the other targets."""
    rows = rows_of(x)
    if not observed:
        raise ValueError("observed: expected at least one target's values")
    names = [key if isinstance(key, str) else _target_name(info, key) for key in observed]
    columns = [
        np.broadcast_to(np.asarray(value, dtype=np.float64), (len(rows),)) for value in observed.values()
    ]
    body: dict[str, Any] = {
        "inputs": rows,
        "observed": [
            dict(zip(names, values, strict=True))
            for values in zip(*(c.tolist() for c in columns), strict=True)
        ],
    }
    if _columns(x) is not None:
        body["columns"] = _columns(x)

    def decode(response: httpx.Response) -> PredictiveDistribution:
        answered = orjson.loads(response.content)["rows"]
        targets = tuple(answered[0]["targets"])
        mean = np.asarray([row["mean"] for row in answered], dtype=np.float64)
        covariance = np.asarray([row["covariance"] for row in answered], dtype=np.float64)
        return PredictiveDistribution(mean, covariance, targets)

    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Call(
        "POST", f"/v1/models/{info.name}/condition", decode, content, {"Content-Type": JSON_CONTENT_TYPE}
    )


def _target_name(info: ModelInfo, index: int) -> str:
    if not 0 <= index < len(info.targets):
        raise ValueError(f"observed: target index {index} is outside [0, {len(info.targets)})")
    return info.targets[index]


def only_model(served: list[ModelInfo]) -> str:
    """The one model name ``served`` holds; ``ValueError`` naming them when there are none or several."""
    names = sorted({info.name for info in served})
    if len(names) != 1:
        raise ValueError(f"model: the server serves {names or 'no models'}; name one (model=...)")
    return names[0]


def latest_info(served: list[ModelInfo], model: str, version: int | None) -> ModelInfo:
    """The description of ``model`` (its ``version``, or its latest served one) among ``served``."""
    matches = [info for info in served if info.name == model and (version is None or info.version == version)]
    if not matches:
        wanted = f"{model!r}" + ("" if version is None else f" version {version}")
        served_names = sorted({f"{info.name}/{info.version}" for info in served})
        raise NotFoundError(HTTPStatus.NOT_FOUND, f"model {wanted} is not served (served: {served_names})")
    return max(matches, key=lambda info: info.version)

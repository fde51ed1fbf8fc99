"""Pure encoding and decoding of Open Inference Protocol (KServe V2) ``/infer`` bodies over REST.

Covers the JSON form and Triton's *binary tensor data* extension exactly as ``tritonclient.http`` (sync
and aio) and ``perf_analyzer`` speak them (research notes ``serving.md``, sections 1.3-1.7). No FastAPI,
no I/O: the route hands over the raw body and the ``Inference-Header-Content-Length`` header; the body's
``Content-Type`` is never consulted (the sync client sends none, the aio client sends
``application/octet-stream`` even for pure JSON).

Request (:func:`parse_infer_request`):

* Without ``Inference-Header-Content-Length`` the whole body is the JSON object. With it, the first *N*
  bytes are the JSON object and the rest is the concatenation of the binary inputs, in input order, each
  input declaring its byte count in ``parameters.binary_data_size`` (little-endian, row-major, no padding).
* JSON ``data`` may be flat or nested lists (Triton accepts both) nested to a uniform depth; its total
  element count must equal the product of ``shape``. Elements must be JSON numbers (integers only for
  ``INT*``/``UINT*``); booleans, strings and ``null`` are rejected, and so are values that do not fit the
  datatype (``1e39`` as ``FP32``, ``300`` as ``INT8``). JSON cannot carry NaN or infinities: clients must
  send those as binary data, which is decoded bit-exactly.
* Only numeric datatypes are accepted (:data:`SUPPORTED_DATATYPES`); ``BOOL``, ``BYTES`` and ``BF16`` are
  known to the protocol but refused as invalid ("expected a numeric datatype").
* Every problem raises a domain error of :mod:`covserve.service._errors` -- ``TooLargeError`` when an
  element count exceeds ``max_elements``, ``InvalidRequestError`` otherwise -- with a message naming the
  field, what was expected and what was received. No other exception escapes, whatever the input.
* Decoded arrays are read-only (binary inputs are zero-copy views of the body when aligned), in the
  datatype the client declared; casting to the model's dtype is the caller's business.
* Unknown request, input and output ``parameters`` are ignored (``priority``, ``timeout``, ...).

Response (:func:`encode_infer_response`):

* Each output goes out as JSON ``data`` (flattened, row-major) or as binary bytes appended after the JSON
  object with ``parameters.binary_data_size``; when any output is binary, the headers carry
  ``Content-Type: application/octet-stream`` and ``Inference-Header-Content-Length``.
* JSON has no NaN or infinity (orjson would silently write ``null``, which clients read back as NaN even
  for ``+inf``), so a JSON output holding a non-finite value raises ``ModelFailureError`` whose message tells
  the client to request that output with ``binary_data=true``; binary outputs carry every value losslessly.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from types import MappingProxyType
from typing import Annotated, Any, Final

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic_core import ErrorDetails

from covserve.service._errors import InvalidRequestError, ModelFailureError, TooLargeError

__all__ = [
    "BINARY_CONTENT_TYPE",
    "HEADER_LENGTH_HEADER",
    "JSON_CONTENT_TYPE",
    "KNOWN_DATATYPES",
    "MAX_RANK",
    "SUPPORTED_DATATYPES",
    "InferRequest",
    "OutputRequest",
    "TensorInput",
    "datatype_of",
    "encode_infer_response",
    "parse_infer_request",
]

HEADER_LENGTH_HEADER: Final = "Inference-Header-Content-Length"
"""Request and response header giving the byte length of the JSON part of a body with binary tensors."""
JSON_CONTENT_TYPE: Final = "application/json"
BINARY_CONTENT_TYPE: Final = "application/octet-stream"

"""Status for a non-finite value in an output requested as JSON: the model misbehaved, not the client."""

MAX_RANK: Final = 32
"""Most dimensions an input may declare, and deepest JSON ``data`` nesting (numpy 1.x's limit)."""
_MAX_GOT_CHARS: Final = 80
"""Longest echo of a received value inside an error message."""

SUPPORTED_DATATYPES: Final[Mapping[str, np.dtype[Any]]] = MappingProxyType(
    {
        "FP16": np.dtype("<f2"),
        "FP32": np.dtype("<f4"),
        "FP64": np.dtype("<f8"),
        "INT8": np.dtype("i1"),
        "INT16": np.dtype("<i2"),
        "INT32": np.dtype("<i4"),
        "INT64": np.dtype("<i8"),
        "UINT8": np.dtype("u1"),
        "UINT16": np.dtype("<u2"),
        "UINT32": np.dtype("<u4"),
        "UINT64": np.dtype("<u8"),
    }
)
"""The numeric OIP datatypes accepted on input and produced on output, with their little-endian wire dtype."""

KNOWN_DATATYPES: Final = frozenset({*SUPPORTED_DATATYPES, "BOOL", "BYTES", "BF16"})
"""Every datatype the protocol (plus Triton's BF16) defines; the non-numeric ones are rejected as such."""

_FLOAT_JSON_TYPES: Final = frozenset({int, float})
_INT_JSON_TYPES: Final = frozenset({int})
_HEADER_LENGTH_PATTERN: Final = re.compile(r"[0-9]{1,18}")  # int() refuses over 4300 digits
_PYDANTIC_EXPECTATION: Final = "Input should be "
_SHORT_REPR: Final = reprlib.Repr()
_SHORT_REPR.maxlevel = 2
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _SHORT_REPR.maxlong = _MAX_GOT_CHARS // 2


# ---------------------------------------------------------------------------------------------- public types
@dataclass(frozen=True)
class TensorInput:
    """One decoded request input: ``data`` is a read-only array of ``shape`` in the datatype's numpy dtype."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    data: NDArray[Any]


@dataclass(frozen=True)
class OutputRequest:
    """One entry of the request's ``outputs``; ``binary`` is ``parameters.binary_data``, None if absent."""

    name: str
    binary: bool | None


@dataclass(frozen=True)
class InferRequest:
    """A validated ``/infer`` request.

    ``outputs`` is None when the client asked for every output (no or an empty ``outputs`` list);
    ``binary_output_default`` is the request-level ``parameters.binary_data_output`` (False when absent).
    """

    id: str | None
    inputs: tuple[TensorInput, ...]
    outputs: tuple[OutputRequest, ...] | None
    binary_output_default: bool

    def binary_for(self, output_name: str) -> bool:
        """Whether ``output_name`` goes out binary: its own ``binary_data`` if given, else the default."""
        for requested in self.outputs or ():
            if requested.name == output_name and requested.binary is not None:
                return requested.binary
        return self.binary_output_default


# ----------------------------------------------------------------------------------------- wire-level schema
_Name = Annotated[StrictStr, Field(min_length=1)]
_Count = Annotated[StrictInt, Field(ge=0)]


class _Wire(BaseModel):
    """Strict validation (no coercion between JSON types); unknown keys are ignored as the protocol asks."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _InputParameters(_Wire):
    binary_data_size: _Count | None = None


class _InputTensor(_Wire):
    name: _Name
    shape: Annotated[list[_Count], Field(max_length=MAX_RANK)]
    datatype: StrictStr
    parameters: _InputParameters | None = None
    data: Any = None  # validated by hand: a pydantic list would copy every element


class _OutputParameters(_Wire):
    binary_data: StrictBool | None = None


class _OutputTensor(_Wire):
    name: _Name
    parameters: _OutputParameters | None = None


class _RequestParameters(_Wire):
    binary_data_output: StrictBool = False


class _Request(_Wire):
    id: StrictStr | None = None
    parameters: _RequestParameters | None = None
    inputs: Annotated[list[_InputTensor], Field(min_length=1)]
    outputs: list[_OutputTensor] | None = None


# --------------------------------------------------------------------------------------------------- parsing
def parse_infer_request(
    body: bytes, inference_header_content_length: str | None, max_elements: int
) -> InferRequest:
    """Decode an OIP ``/infer`` body (JSON, or JSON followed by binary tensors) into an :class:`InferRequest`.

    ``inference_header_content_length`` is the raw header value or None when the header is absent;
    ``max_elements`` bounds each input's element count and their total (413 beyond it).
    Raises :class:`InvalidRequestError` or :class:`TooLargeError` for anything malformed, and nothing else.
    """
    view = memoryview(body).cast("B")
    header_length = _parse_header_length(inference_header_content_length, len(view))
    has_binary_section = header_length is not None
    json_part = view if header_length is None else view[:header_length]
    binary_part = view[len(json_part) :]

    request = _validate_structure(_load_json(json_part))
    _check_unique([tensor.name for tensor in request.inputs], "inputs")
    if request.outputs:
        _check_unique([tensor.name for tensor in request.outputs], "outputs")

    total = 0
    inputs: list[TensorInput] = []
    offset = 0
    for index, tensor in enumerate(request.inputs):
        where = f"inputs[{index}] ({_got(tensor.name)})"
        dtype = _numeric_dtype(tensor.datatype, where)
        count = _element_count(tensor.shape, where, max_elements)
        total += count
        if total > max_elements:
            raise TooLargeError(
                f"inputs: expected at most {max_elements} elements over all inputs, got at least {total}",
            )
        size = tensor.parameters.binary_data_size if tensor.parameters else None
        if size is None:
            array = _decode_json_data(tensor.data, dtype, tensor.datatype, count, where)
        else:
            if tensor.data is not None:
                raise _bad(f"{where}: expected either 'data' or parameters.binary_data_size, got both")
            if not has_binary_section:
                raise _bad(
                    f"{where}.parameters.binary_data_size: expected the {HEADER_LENGTH_HEADER} header "
                    "for binary tensor data, got no such header"
                )
            expected_size = count * dtype.itemsize
            if size != expected_size:
                raise _bad(
                    f"{where}.parameters.binary_data_size: expected {expected_size} bytes "
                    f"({count} x {tensor.datatype} for shape {tensor.shape}), got {size}"
                )
            if offset + size > len(binary_part):
                raise _bad(
                    f"{where}: expected {size} bytes of binary data at offset {offset} after the JSON "
                    f"header, got {max(len(binary_part) - offset, 0)} (truncated payload)"
                )
            array = _decode_binary(binary_part[offset : offset + size], dtype)
            offset += size
        array = array.reshape(tensor.shape)
        array.flags.writeable = False
        inputs.append(TensorInput(tensor.name, tuple(tensor.shape), tensor.datatype, array))

    if offset != len(binary_part):
        raise _bad(
            f"binary tensor data: expected {offset} bytes after the {header_length}-byte JSON header "
            f"(sum of binary_data_size), got {len(binary_part)}"
        )
    outputs = (
        tuple(
            OutputRequest(o.name, o.parameters.binary_data if o.parameters else None) for o in request.outputs
        )
        if request.outputs
        else None
    )
    binary_default = request.parameters.binary_data_output if request.parameters else False
    return InferRequest(request.id, tuple(inputs), outputs, binary_default)


def _bad(message: str) -> InvalidRequestError:
    """The error for a malformed request."""
    return InvalidRequestError(message)


def _got(value: object) -> str:
    """A short ``repr`` of a received value for an error message (bounded work even for huge values)."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= _MAX_GOT_CHARS else text[: _MAX_GOT_CHARS - 3] + "..."


def _parse_header_length(value: str | None, body_length: int) -> int | None:
    """The JSON header length from ``Inference-Header-Content-Length``, checked against the body."""
    if value is None:
        return None
    text = value.strip()
    if not _HEADER_LENGTH_PATTERN.fullmatch(text):
        raise _bad(f"{HEADER_LENGTH_HEADER} header: expected a non-negative integer, got {_got(value)}")
    length = int(text)
    if length > body_length:
        raise _bad(
            f"{HEADER_LENGTH_HEADER} header: expected at most the body length ({body_length} bytes), "
            f"got {length}"
        )
    return length


def _load_json(data: memoryview) -> Any:
    """The JSON object of the request (orjson), or a 400 naming the parse error."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"request JSON: expected a valid UTF-8 JSON object, got a parse error: {exc}") from None


def _validate_structure(document: Any) -> _Request:
    """The request validated against the wire schema; the first problem becomes a 400 naming its field."""
    if not isinstance(document, dict):
        raise _bad(f"request JSON: expected an object, got {type(document).__name__}")
    try:
        return _Request.model_validate(document)
    except ValidationError as exc:
        raise _bad(_describe(exc.errors(include_url=False)[0])) from None
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: pydantic wraps these itself
        raise _bad(f"request JSON: invalid structure: {exc}") from None


def _describe(error: ErrorDetails) -> str:
    """``field: expected ..., got ...`` for the first pydantic error, in the protocol's vocabulary."""
    field = _format_location(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}
    got = _got(error.get("input"))
    if kind == "missing":
        return f"{field}: expected this field, got nothing"
    if kind in {"model_type", "dict_type"}:
        return f"{field}: expected a JSON object, got {got}"
    if kind == "string_too_short":
        return f"{field}: expected a non-empty string, got {got}"
    if kind == "too_long":
        return f"{field}: expected at most {context['max_length']} entries, got {context['actual_length']}"
    if kind == "too_short":
        return f"{field}: expected at least {context['min_length']} entry, got {context['actual_length']}"
    message = str(error["msg"])
    if message.startswith(_PYDANTIC_EXPECTATION):
        message = "expected " + message.removeprefix(_PYDANTIC_EXPECTATION)
    return f"{field}: {message}, got {got}"


def _format_location(location: Iterable[int | str]) -> str:
    """``('inputs', 0, 'shape', 1)`` -> ``inputs[0].shape[1]``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "request"


def _check_unique(names: list[str], field: str) -> None:
    """400 when a tensor name repeats within ``inputs`` or ``outputs``."""
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise _bad(f"{field}[{index}].name: expected unique names, got {_got(name)} a second time")
        seen.add(name)


def _numeric_dtype(datatype: str, where: str) -> np.dtype[Any]:
    """The wire dtype of a supported datatype; 400 for a non-numeric or unknown one."""
    dtype = SUPPORTED_DATATYPES.get(datatype)
    if dtype is not None:
        return dtype
    expected = ", ".join(SUPPORTED_DATATYPES)
    if datatype in KNOWN_DATATYPES:
        raise _bad(f"{where}.datatype: expected a numeric datatype ({expected}), got '{datatype}'")
    raise _bad(f"{where}.datatype: unsupported datatype, expected one of {expected}, got {_got(datatype)}")


def _element_count(shape: list[int], where: str, max_elements: int) -> int:
    """The product of ``shape`` (Python integers: no overflow); 413 when it or one dimension is too big."""
    for axis, size in enumerate(shape):  # a zero-sized tensor may not hide absurd dimensions either
        if size > max_elements:
            raise TooLargeError(
                f"{where}.shape[{axis}]: expected at most {max_elements} elements along any axis, got {size}",
            )
    count = math.prod(shape)
    if count > max_elements:
        raise TooLargeError(
            f"{where}.shape: expected at most {max_elements} elements, got {shape} = {count} elements",
        )
    return count


def _decode_binary(chunk: memoryview, dtype: np.dtype[Any]) -> NDArray[Any]:
    """The little-endian bytes of one tensor as a flat native-order array, zero-copy when aligned."""
    array: NDArray[Any] = np.frombuffer(chunk, dtype=dtype)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    elif not array.flags.aligned:
        array = array.copy()
    return array


def _decode_json_data(data: Any, dtype: np.dtype[Any], datatype: str, count: int, where: str) -> NDArray[Any]:
    """JSON ``data`` (flat or nested lists of numbers) as a flat array of ``count`` elements of ``dtype``."""
    field = f"{where}.data"
    if data is None:
        raise _bad(f"{field}: expected 'data' or parameters.binary_data_size, got neither")
    if not isinstance(data, list):
        raise _bad(f"{field}: expected a list of numbers, got {type(data).__name__}")
    allowed = _INT_JSON_TYPES if dtype.kind in "iu" else _FLOAT_JSON_TYPES
    leaves = _leaf_lists(data, allowed, datatype, field)
    got = sum(len(leaf) for leaf in leaves)
    if got != count:
        raise _bad(f"{field}: expected {count} elements to match the shape, got {got}")
    flat = leaves[0] if len(leaves) == 1 else list(chain.from_iterable(leaves))
    native = dtype.newbyteorder("=")
    try:
        if dtype.kind in "iu":
            info = np.iinfo(native)
            low, high = (min(flat), max(flat)) if flat else (0, 0)
            if low < info.min or high > info.max:
                outlier = low if low < info.min else high
                raise _bad(
                    f"{field}: expected values in [{info.min}, {info.max}] for {datatype}, got {outlier}"
                )
            return np.asarray(flat, dtype=native)
        wide = np.asarray(flat, dtype=np.float64)
        with np.errstate(over="ignore"):
            narrow = wide.astype(native)
        finite = np.isfinite(narrow)
        if not finite.all():
            outlier = float(wide[~finite][0])
            raise _bad(f"{field}: expected values within the range of {datatype}, got {outlier!r}")
        return narrow
    except (ValueError, TypeError, OverflowError) as exc:  # defensive: types were checked above
        raise _bad(f"{field}: expected numbers convertible to {datatype}, got an error: {exc}") from None


def _leaf_lists(data: list[Any], allowed: frozenset[type], datatype: str, field: str) -> list[list[Any]]:
    """The innermost lists of nested ``data`` in row-major order, checked to hold ``allowed`` numbers.

    Walks level by level (no recursion, nesting capped at :data:`MAX_RANK`). Every non-empty list of a
    level must hold only numbers or only lists, the same for the whole level, so that breadth-first order
    is row-major. ``set(map(type, ...))`` keeps the per-element check in C.
    """
    expected = (
        f"{'integers' if allowed is _INT_JSON_TYPES else 'numbers'} for {datatype} (flat or nested lists)"
    )
    level = [data]
    for _depth in range(MAX_RANK):
        leaves: list[list[Any]] = []
        deeper: list[list[Any]] = []
        for items in level:
            kinds = set(map(type, items))
            if kinds == {list}:
                deeper.extend(items)
            elif kinds <= allowed:
                leaves.append(items)
            else:
                odd = [item for item in items if type(item) not in allowed and type(item) is not list][:1]
                detail = _got(odd[0]) if odd else "a mix of lists and numbers"
                raise _bad(f"{field}: expected {expected}, got {detail}")
        if not deeper:
            return leaves
        if any(leaves):
            raise _bad(f"{field}: expected {expected} nested to a uniform depth, got numbers beside lists")
        level = deeper
    raise _bad(f"{field}: expected {expected} nested at most {MAX_RANK} deep, got deeper nesting")


# -------------------------------------------------------------------------------------------------- encoding
def datatype_of(dtype: np.dtype[Any]) -> str:
    """The OIP datatype of a numeric numpy dtype (any byte order); TypeError for anything else."""
    for name, wire in SUPPORTED_DATATYPES.items():
        if dtype.kind == wire.kind and dtype.itemsize == wire.itemsize:
            return name
    raise TypeError(f"no OIP datatype for numpy dtype {dtype}")


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, NDArray[Any], bool]],
) -> tuple[bytes, dict[str, str]]:
    """Encode an OIP ``/infer`` response; returns the body and the headers to add to it.

    ``outputs`` holds ``(name, array, binary)`` in response order. ``model_version`` is omitted when empty
    and ``id`` when ``request_id`` is None. JSON outputs are flattened row-major; binary outputs are appended
    after the JSON object as little-endian bytes, and then ``Content-Type: application/octet-stream`` and
    ``Inference-Header-Content-Length`` are returned, otherwise ``Content-Type: application/json``.
    Raises :class:`ModelFailureError` for a non-finite value in a JSON output (JSON cannot carry it: ask for
    binary) and TypeError for a non-numeric array dtype (a server bug).
    """
    header: dict[str, Any] = {"model_name": model_name}
    if model_version:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array, binary in outputs:
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array, dtype=SUPPORTED_DATATYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            flat = np.ascontiguousarray(array, dtype=SUPPORTED_DATATYPES[datatype].newbyteorder("=")).ravel()
            if flat.dtype.kind == "f" and not np.isfinite(flat).all():
                raise ModelFailureError(
                    f"output '{name}': expected finite values for a JSON response, got NaN or infinity; "
                    "request it with binary_data=true to receive non-finite values",
                )
            entry["data"] = flat
        described.append(entry)
    header["outputs"] = described
    json_bytes = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return json_bytes, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(len(json_bytes))}
    return b"".join([json_bytes, *chunks]), headers

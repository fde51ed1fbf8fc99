"""Property-based fuzzing of both HTTP APIs against a real uvicorn server over a real two-model repository.

Whatever a client sends to the native API (``/v1/models/{name}[/versions/{v}]/predict``, ``.../condition``)
or to the Open Inference Protocol (``/v2/models/{name}[/versions/{v}]/infer``, JSON and binary bodies),
the server answers below 500, every error is JSON ``{"error": "<string>"}`` (503 with ``Retry-After``),
and every successful prediction carries finite numbers and symmetric positive-definite covariances.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from covserve import gaussian
from covserve.service import Settings
from tests.service_fixtures import running_server

MODELS = {"alpha": (3, 2), "beta": (2, 3)}
"""Served models: name -> (in_dim, out_dim)."""
MAX_ROWS = 64
MAX_BODY_BYTES = 65536
HEADER = "Inference-Header-Content-Length"
NATIVE_OUTPUTS = ("mean", "covariance", "std", "correlation", "scale", "interval", "mahalanobis_ood")
OIP_OUTPUTS = ("mean", "covariance", "scale")
FLOAT32_MAX = float(np.finfo(np.float32).max)
CONCURRENT_REQUESTS = 200

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def repository(served_repository: Path) -> Path:
    return served_repository


@pytest.fixture(scope="module")
def server(serve: Callable[..., str]) -> str:
    return serve(max_rows=MAX_ROWS, max_body_bytes=MAX_BODY_BYTES)


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60.0) as shared:
        yield shared


# ------------------------------------------------------------------------------------------ response checks
def _post(
    client: httpx.Client, path: str, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST and check the invariants every response holds; one retry on a dropped keep-alive connection.

    Header values go out as UTF-8 bytes (httpx would refuse a non-ASCII ``str``), so fuzzed values such as
    Arabic-Indic digits reach the server.
    """
    raw = {key.encode(): value.encode() for key, value in (headers or {}).items()}
    try:
        response = client.post(path, content=content, headers=raw)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        response = client.post(path, content=content, headers=raw)
    _check_response(response, path, content)
    return response


def _check_response(response: httpx.Response, path: str, content: bytes = b"") -> None:
    context = f"POST {path[:200]} {content[:300]!r} -> {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, context
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), context
        body = response.json()
        assert isinstance(body, dict), context
        assert isinstance(body.get("error"), str), context
        assert body["error"], context
        if response.status_code == 503:
            assert response.headers.get("retry-after"), context


def _assert_finite_leaves(value: Any, where: str) -> None:
    """Every leaf of a JSON value is a finite number (a NaN that orjson wrote as null fails too)."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            _assert_finite_leaves(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _assert_finite_leaves(item, f"{where}.{key}")
    else:
        assert type(value) in (int, float), f"{where}: expected a number, got {value!r}"
        assert math.isfinite(value), f"{where}: expected a finite number, got {value!r}"


def _assert_spd(covariance: NDArray[np.float64], where: str) -> None:
    assert covariance.ndim == 3, where
    assert covariance.shape[-1] == covariance.shape[-2], where
    healthy = gaussian.is_symmetric_positive_definite(covariance)
    assert healthy.all(), f"{where}: rows {np.flatnonzero(~healthy).tolist()} are not SPD"


def _check_native_prediction(response: httpx.Response, model: str | None, rows: int | None) -> None:
    body = response.json()
    assert body["model"] in MODELS
    if model is not None:
        assert body["model"] == model
    _, out_dim = MODELS[body["model"]]
    assert isinstance(body["version"], int)
    assert len(body["targets"]) == out_dim
    outputs = body["outputs"]
    assert outputs, "a prediction without outputs"
    assert set(outputs) <= set(NATIVE_OUTPUTS)
    _assert_finite_leaves(outputs, "outputs")
    lengths = {len(value["lower"] if name == "interval" else value) for name, value in outputs.items()}
    batch = rows if rows is not None else min(lengths)
    assert lengths == {batch}, lengths
    square = (batch, out_dim, out_dim)
    for name, value in outputs.items():
        if name == "interval":
            lower, upper = np.asarray(value["lower"]), np.asarray(value["upper"])
            assert lower.shape == upper.shape == (batch, out_dim)
            assert (lower <= upper).all()
            continue
        array = np.asarray(value, dtype=np.float64)
        if name in ("mean", "std"):
            assert array.shape == (batch, out_dim), name
        elif name == "mahalanobis_ood":
            assert array.shape == (batch,)
            assert (array >= 0).all()
        else:
            assert array.shape == square, name
    if "covariance" in outputs:
        _assert_spd(np.asarray(outputs["covariance"], dtype=np.float64), "outputs.covariance")
    if "scale" in outputs:
        scale = np.asarray(outputs["scale"], dtype=np.float64)
        _assert_spd(scale @ np.swapaxes(scale, -1, -2), "outputs.scale · scaleᵀ")
    if "std" in outputs:
        assert (np.asarray(outputs["std"]) > 0).all()
    if "correlation" in outputs:
        correlation = np.asarray(outputs["correlation"], dtype=np.float64)
        assert np.allclose(np.diagonal(correlation, axis1=-2, axis2=-1), 1.0)
        assert (np.abs(correlation) <= 1.0 + 1e-9).all()


def _check_condition(response: httpx.Response, model: str) -> None:
    body = response.json()
    assert body["model"] == model
    _, out_dim = MODELS[model]
    for index, row in enumerate(body["rows"]):
        _assert_finite_leaves(row["mean"], f"rows[{index}].mean")
        _assert_finite_leaves(row["covariance"], f"rows[{index}].covariance")
        free = len(row["targets"])
        assert 1 <= free <= out_dim
        mean = np.asarray(row["mean"], dtype=np.float64)
        covariance = np.asarray(row["covariance"], dtype=np.float64)
        assert mean.shape == (free,)
        assert covariance.shape == (free, free)
        _assert_spd(covariance[None], f"rows[{index}].covariance")


def _check_oip_prediction(response: httpx.Response, model: str | None, rows: int | None) -> None:
    content = response.content
    declared = response.headers.get(HEADER)
    if declared is None:
        assert response.headers["content-type"].startswith("application/json")
        header, binary = json.loads(content), b""
    else:
        assert response.headers["content-type"] == "application/octet-stream"
        length = int(declared)
        header, binary = json.loads(content[:length]), content[length:]
    assert header["model_name"] in MODELS
    if model is not None:
        assert header["model_name"] == model
    _, out_dim = MODELS[header["model_name"]]
    offset = 0
    arrays: dict[str, NDArray[np.float64]] = {}
    for output in header["outputs"]:
        assert output["datatype"] == "FP32"
        shape = tuple(output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            _assert_finite_leaves(output["data"], f"outputs.{output['name']}.data")
            array = np.asarray(output["data"], dtype=np.float64)
        else:
            array = np.frombuffer(binary[offset : offset + size], dtype="<f4").astype(np.float64)
            offset += size
        arrays[output["name"]] = array.reshape(shape)
        assert np.isfinite(arrays[output["name"]]).all(), output["name"]
    assert offset == len(binary), "binary section longer than the declared outputs"
    assert set(arrays) <= set(OIP_OUTPUTS)
    batch = rows if rows is not None else len(next(iter(arrays.values())))
    expected = {
        "mean": (batch, out_dim),
        "covariance": (batch, out_dim, out_dim),
        "scale": (batch, out_dim, out_dim),
    }
    for name, array in arrays.items():
        assert array.shape == expected[name], name
    if "covariance" in arrays:
        _assert_spd(arrays["covariance"], "covariance")
    if "scale" in arrays:
        _assert_spd(arrays["scale"] @ np.swapaxes(arrays["scale"], -1, -2), "scale · scaleᵀ")


# ----------------------------------------------------------------------------------------------- strategies
def _json_bytes(value: Any) -> bytes:
    """Python's encoder, which writes NaN and Infinity as (invalid) JSON tokens on purpose."""
    return json.dumps(value, allow_nan=True).encode()


EXTREMES = [
    0.0,
    -0.0,
    5e-324,
    1e-300,
    1.0,
    -1.0,
    1e30,
    -1e30,
    FLOAT32_MAX,
    -FLOAT32_MAX,
    3.4028236e38,
    1e39,
    -1e39,
    1e300,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    math.nan,
    math.inf,
    -math.inf,
]
FINITE = st.one_of(st.floats(-1e4, 1e4), st.floats(-FLOAT32_MAX, FLOAT32_MAX))
FLOATS = st.one_of(FINITE, st.sampled_from(EXTREMES), st.floats())
JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=6),
    st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e39", "1.5", "", "0x10"]),
    st.just([]),
    st.just({}),
    st.just([1.0]),
)
BIG_INTEGERS = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([2**63, 2**64, 10**30, -(10**30), 10**400])
)
NUMBERS = st.one_of(FLOATS, st.integers(-100, 100), BIG_INTEGERS)
FINITE_EXTREMES = st.one_of(
    st.sampled_from(
        [FLOAT32_MAX, -FLOAT32_MAX, 3.4028236e38, 1e39, -1e39, 1e300, -1.7976931348623157e308, 5e-324]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
)
"""Finite doubles, many beyond float32 (the models' dtype)."""
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
"""Written by :func:`_json_bytes` as the invalid JSON tokens NaN, Infinity and -Infinity."""
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
WEIRD_NAMES = st.one_of(
    st.sampled_from(
        [
            "",
            "ALPHA",
            "alpha ",
            " beta",
            "alpha/",
            "alpha/1",
            "a/b/c",
            "../alpha",
            "alpha\x00",
            "\n",
            "gamma",
            "models",
            "ü",
            "模型",
            "😀",
            "%",
            "%2F",
            "?",
            "#",
            "versions",
        ]
    ),
    st.text(min_size=1, max_size=40),
    st.integers(100, 6000).map(lambda n: "m" * n),
)
NAMES = st.one_of(st.sampled_from(list(MODELS)), WEIRD_NAMES)
VERSIONS = st.one_of(
    st.integers(-3, 4).map(str),
    st.integers(5, 10**40).map(str),
    st.sampled_from(
        ["01", "001", "1.0", "1e0", "²", "١", "+1", " 1", "1 ", "0x1", "latest", "-0", "9" * 5000]
    ),
    st.text(min_size=1, max_size=20),
)


def _segment(text: str, raw_slashes: bool) -> str:
    return quote(text, safe="/" if raw_slashes else "")


@st.composite
def malformed_json(draw: st.DrawFn) -> bytes:
    """Valid-looking JSON, cut short, spliced with garbage or with a stray byte inserted."""
    text = _json_bytes(draw(JSON_VALUES | st.just({"inputs": [[1.0, 2.0, 3.0]]})))
    cut = draw(st.integers(0, len(text)))
    mutation = draw(st.sampled_from(["truncate", "insert", "append", "prefix"]))
    junk = draw(
        st.binary(min_size=1, max_size=8) | st.sampled_from([b"NaN", b"}", b"]", b",", b"\xff", b"\x00"])
    )
    if mutation == "truncate":
        return text[:cut]
    if mutation == "insert":
        return text[:cut] + junk + text[cut:]
    if mutation == "append":
        return text + junk
    return junk + text


GARBAGE_BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(_json_bytes),
    malformed_json(),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b"{}",
            b'"inputs"',
            b"{" * 2000,
            b"[" * 5000 + b"]" * 5000,
            b" " * (MAX_BODY_BYTES + 1),
        ]
    ),
)


PREDICT_MUTATIONS = (
    "row count",
    "ragged row",
    "width",
    "extreme values",
    "non-finite values",
    "junk values",
    "rows not lists",
    "instance keys",
    "both forms",
    "neither form",
    "unknown output",
    "outputs not a list",
    "level",
    "extra key",
)
CONDITION_MUTATIONS = (
    "row count",
    "ragged row",
    "width",
    "extreme values",
    "non-finite values",
    "junk values",
    "observed count",
    "observed unknown key",
    "observed every target",
    "observed extreme values",
    "observed non-finite values",
    "observed junk values",
    "observed missing",
    "inputs missing",
)
OIP_MUTATIONS = (
    "datatype",
    "rows",
    "width",
    "rank",
    "huge shape",
    "element count",
    "extreme values",
    "non-finite values",
    "junk values",
    "raw bits",
    "binary size",
    "payload length",
    "header length",
    "no header",
    "data and binary",
    "tensor name",
    "inputs list",
    "outputs",
    "parameters",
    "id",
)
CLEAN = st.one_of(
    st.floats(-1e3, 1e3), st.floats(-FLOAT32_MAX, FLOAT32_MAX), st.sampled_from([0.0, FLOAT32_MAX])
)
"""Values every model must answer: finite in float32, the models' dtype."""


def mutations(options: tuple[str, ...]) -> st.SearchStrategy[frozenset[str]]:
    """A few mutations of an otherwise valid request (none about a third of the time)."""
    return st.frozensets(st.sampled_from(options), max_size=3)


def _spoilt_values(applied: frozenset[str], prefix: str) -> st.SearchStrategy[Any]:
    """Clean JSON numbers, plus the extreme, non-finite or junk values the ``prefix``-ed mutations ask for."""
    cells: list[st.SearchStrategy[Any]] = [CLEAN]
    if f"{prefix}extreme values" in applied:
        cells.append(FINITE_EXTREMES | BIG_INTEGERS)
    if f"{prefix}non-finite values" in applied:
        cells.append(NON_FINITE)
    if f"{prefix}junk values" in applied:
        cells.append(JUNK)
    return st.one_of(*cells)


@st.composite
def rows_with(draw: st.DrawFn, in_dim: int, applied: frozenset[str]) -> list[Any]:
    """Rows of ``in_dim`` clean values, spoilt as ``applied`` says."""
    count = draw(st.integers(1, 5))
    if "row count" in applied:
        count = draw(st.sampled_from([0, MAX_ROWS, MAX_ROWS + 1, 100]))
    width = draw(st.sampled_from([0, in_dim - 1, in_dim + 1, 7])) if "width" in applied else in_dim
    values = _spoilt_values(applied, "")
    distinct = [draw(st.lists(values, min_size=width, max_size=width)) for _ in range(min(count, 4))]
    rows: list[Any] = [distinct[index % len(distinct)] for index in range(count)] if distinct else []
    if "ragged row" in applied and rows:
        rows[draw(st.integers(0, len(rows) - 1))] = draw(st.lists(CLEAN, max_size=in_dim + 2))
    if "rows not lists" in applied:
        rows = draw(st.sampled_from([rows[:1] * 2 + [1.0], [[rows]], {"0": rows}]) | JUNK)
    return rows


@st.composite
def native_predict_body(draw: st.DrawFn, in_dim: int) -> tuple[dict[str, Any], frozenset[str]]:
    """A predict body with a few mutations; without any it must be answered 200."""
    applied = draw(mutations(PREDICT_MUTATIONS))
    rows = draw(rows_with(in_dim, applied))
    body: dict[str, Any] = {}
    as_instances = draw(st.booleans())
    if as_instances and isinstance(rows, list) and all(isinstance(row, list) for row in rows):
        instances = [{f"x{i}": value for i, value in enumerate(row)} for row in rows]
        if "instance keys" in applied and instances:
            instance = instances[draw(st.integers(0, len(instances) - 1))]
            key = draw(st.sampled_from([f"x{in_dim}", "X0", "", "x-1"]) | st.text(max_size=4))
            if draw(st.booleans()) and instance:
                instance.pop(next(iter(instance)))
            instance[key] = 1.0
        body["instances"] = instances
    else:
        body["inputs"] = rows
    if "both forms" in applied:
        body["inputs" if "instances" in body else "instances"] = draw(JUNK | st.just(rows))
    if "neither form" in applied:
        body.pop("inputs", None)
        body.pop("instances", None)
    if draw(st.booleans()):
        body["outputs"] = draw(st.lists(st.sampled_from(NATIVE_OUTPUTS), max_size=8) | st.none())
    if "unknown output" in applied:
        unknown = st.sampled_from(["median", "MEAN", "", "covariance ", "Mean"]) | st.text(max_size=8) | JUNK
        body["outputs"] = [*(body.get("outputs") or []), draw(unknown)]
    if "outputs not a list" in applied:
        body["outputs"] = draw(JUNK.filter(lambda value: value not in ([], None)) | st.just("mean"))
    if draw(st.booleans()):
        body["level"] = draw(st.floats(1e-9, 1 - 1e-9) | st.sampled_from([5e-324, 1e-300, 0.5, 1 - 2**-52]))
    if "level" in applied:
        edges = [0.0, -0.0, 1.0, 1 - 2**-53, 1.5, -0.1, math.nan, math.inf, -math.inf, 1e308]
        body["level"] = draw(st.sampled_from(edges) | st.floats() | JUNK)
        if isinstance(body.get("outputs"), list) or body.get("outputs") is None:
            body["outputs"] = [*(body.get("outputs") or []), "interval"]
    if "extra key" in applied:
        body[draw(st.sampled_from(["input", "observed", "model", ""]) | st.text(max_size=6))] = draw(
            JSON_VALUES
        )
    return body, applied


@st.composite
def condition_body(draw: st.DrawFn, in_dim: int, out_dim: int) -> tuple[dict[str, Any], frozenset[str]]:
    """A condition body with a few mutations; without any it must be answered 200."""
    applied = draw(mutations(CONDITION_MUTATIONS))
    rows = draw(rows_with(in_dim, applied))
    targets = [f"y{i}" for i in range(out_dim)]
    values = _spoilt_values(applied, "observed ")
    count = len(rows) if isinstance(rows, list) else 1
    if "observed count" in applied:
        count = draw(st.sampled_from([0, count + 1, max(count - 1, 0), 100]))
    observed: list[Any] = []
    for _ in range(min(count, 100)):
        keys = draw(st.lists(st.sampled_from(targets), max_size=out_dim - 1, unique=True))
        if "observed every target" in applied:
            keys = targets
        mapping: dict[str, Any] = {key: draw(values) for key in keys}
        if "observed unknown key" in applied:
            mapping[draw(st.sampled_from([f"y{out_dim}", "x0", "", "Y0"]) | st.text(max_size=4))] = 0.0
        observed.append(mapping)
    body: dict[str, Any] = {"inputs": rows, "observed": observed}
    if "observed missing" in applied:
        body["observed"] = draw(st.sampled_from([None, {}, "y0"]) | st.just(rows))
    if "inputs missing" in applied:
        del body["inputs"]
    return body, applied


@st.composite
def valid_rows(draw: st.DrawFn, in_dim: int) -> list[list[float]]:
    return draw(st.lists(st.lists(CLEAN, min_size=in_dim, max_size=in_dim), min_size=1, max_size=MAX_ROWS))


NUMERIC_DATATYPES = (
    "FP32",
    "FP32",
    "FP32",
    "FP64",
    "FP64",
    "FP16",
    "INT8",
    "INT32",
    "INT64",
    "UINT8",
    "UINT64",
)
NUMPY_TYPES = {
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "i1",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT64": "<u8",
}
BINARY_FLOATS = {2: st.floats(width=16), 4: st.floats(width=32), 8: st.floats(width=64)}
"""Every float of the binary datatype's width, NaN and infinities included."""
HUGE_DIMS = st.sampled_from([10**6, 2**31, 2**32 + 3, 2**63 - 1, 2**63, 2**64, 10**30])


def _nest(values: list[Any], shape: list[int]) -> list[Any]:
    """``values`` (row-major, ``prod(shape)`` of them) as nested lists of ``shape``."""
    if len(shape) <= 1:
        return values
    chunk = math.prod(shape[1:])
    return [_nest(values[i * chunk : (i + 1) * chunk], shape[1:]) for i in range(shape[0])]


def _declared_count(shape: list[Any]) -> int | None:
    """The element count of a small, sane shape; None for anything else."""
    sizes = [size for size in shape if type(size) is int and 0 <= size <= 512]
    if len(sizes) != len(shape) or math.prod(sizes) > 512:
        return None
    return math.prod(sizes)


def _values_for(datatype: str, applied: frozenset[str]) -> st.SearchStrategy[Any]:
    """JSON elements for ``datatype``: fitting ones, plus extremes or junk when those mutations apply."""
    cells: list[st.SearchStrategy[Any]] = []
    if datatype.startswith("FP"):
        cells.append(st.floats(-1e3, 1e3) if datatype == "FP16" else CLEAN)
    else:
        cells.append(st.integers(0, 100))
    if "extreme values" in applied:
        cells.append(FINITE_EXTREMES | BIG_INTEGERS | st.integers(-300, 300))
    if "non-finite values" in applied:
        cells.append(NON_FINITE)
    if "junk values" in applied:
        cells.append(JUNK)
    return st.one_of(*cells)


@st.composite
def oip_request(draw: st.DrawFn, in_dim: int) -> tuple[bytes, dict[str, str], int | None, frozenset[str]]:
    """An ``/infer`` body (JSON, or JSON + binary), its headers and its rows, with a few mutations applied.

    Without mutations the request is valid and must be answered 200.
    """
    applied = draw(mutations(OIP_MUTATIONS))
    datatype = draw(st.sampled_from(NUMERIC_DATATYPES))
    rows = draw(st.integers(1, 6))
    shape: list[Any] = [rows, in_dim]
    if "rows" in applied:
        shape[0] = draw(st.sampled_from([-1, 0, MAX_ROWS + 1, 100]) | HUGE_DIMS)
    if "width" in applied:
        shape[1] = draw(st.sampled_from([0, 1, in_dim + 1, -in_dim]) | HUGE_DIMS)
    if "rank" in applied:
        shape = draw(
            st.sampled_from([[rows * in_dim], [rows, in_dim, 1], [1, rows, in_dim], [], [1] * 33, [1] * 40])
        )
    if "huge shape" in applied:
        shape = draw(st.lists(st.integers(-3, 6) | HUGE_DIMS, min_size=1, max_size=4))
        if draw(st.booleans()):
            shape[draw(st.integers(0, len(shape) - 1))] = draw(
                st.sampled_from([1.5, "2", None, True, -(2**70)])
            )
    count = _declared_count(shape)
    if count is None:
        count = draw(st.integers(0, 6))
    if "element count" in applied:
        count = max(0, count + draw(st.sampled_from([-1, 1, 2, -count])))
    tensor: dict[str, Any] = {"name": "x", "shape": shape, "datatype": datatype}
    if "datatype" in applied:
        tensor["datatype"] = draw(
            st.sampled_from(["BOOL", "BYTES", "BF16", "fp32", "float32", "", "FP128", "TYPE_FP32", "FP32 "])
            | JUNK
        )
    if "tensor name" in applied:
        tensor["name"] = draw(st.sampled_from(["X", "", "input", "x ", "mean"]) | st.text(max_size=4) | JUNK)
    binary = draw(st.booleans())
    payload = b""
    if binary:
        dtype = np.dtype(NUMPY_TYPES[datatype])
        if "raw bits" in applied:
            payload = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        elif dtype.kind == "f":
            clean = st.floats(-1e3, 1e3) if datatype == "FP16" else CLEAN
            spoilt = {"extreme values", "non-finite values"} & applied
            floats = BINARY_FLOATS[dtype.itemsize] if spoilt else clean
            values = draw(st.lists(floats, min_size=count, max_size=count))
            with np.errstate(over="ignore", invalid="ignore"):
                payload = np.asarray(values, dtype=np.float64).astype(dtype).tobytes()
        else:
            info = np.iinfo(dtype)
            values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=count, max_size=count))
            payload = np.asarray(values, dtype=dtype).tobytes()
        size: Any = len(payload)
        if "binary size" in applied:
            size = draw(st.sampled_from([0, size - 1, size + 1, 2 * size + 4, -1, 10**20]) | JUNK)
        tensor["parameters"] = {"binary_data_size": size}
        if "payload length" in applied:
            payload = draw(
                st.sampled_from([payload[: len(payload) // 2], payload + b"\x00", payload[:-1], b""])
            )
        if "data and binary" in applied:
            tensor["data"] = [1] * count
    else:
        values = draw(st.lists(_values_for(datatype, applied), min_size=count, max_size=count))
        nested = draw(st.booleans()) and _declared_count(shape) == len(values) and len(shape) > 1
        tensor["data"] = _nest(values, shape) if nested else values
        if "data and binary" in applied:
            tensor["parameters"] = {"binary_data_size": count * 4}
    request: dict[str, Any] = {"inputs": [tensor]}
    if "inputs list" in applied:
        other = {**tensor, "name": "y"}
        request["inputs"] = draw(
            st.sampled_from([[], [tensor, tensor], [tensor, other], [other, tensor]]) | JUNK
        )
    if draw(st.booleans()):
        names = st.sampled_from(OIP_OUTPUTS)
        parameters = st.fixed_dictionaries({}, optional={"binary_data": st.booleans()})
        entry = st.fixed_dictionaries({"name": names}, optional={"parameters": parameters})
        request["outputs"] = draw(st.lists(entry, max_size=3, unique_by=lambda output: str(output["name"])))
    if "outputs" in applied:
        weird = st.sampled_from(["median", "", "MEAN", "std", "x", "mean"]) | st.text(max_size=6) | JUNK
        parameters = st.fixed_dictionaries({}, optional={"binary_data": JUNK}) | JUNK
        entry = st.fixed_dictionaries({"name": weird}, optional={"parameters": parameters}) | JUNK
        request["outputs"] = draw(st.lists(entry, min_size=1, max_size=4) | JUNK)
    if draw(st.booleans()):
        request["parameters"] = {"binary_data_output": draw(st.booleans())}
    if "parameters" in applied:
        request["parameters"] = draw(
            st.fixed_dictionaries({}, optional={"binary_data_output": JUNK}) | JUNK | JSON_VALUES
        )
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=10))
    if "id" in applied:
        request["id"] = draw(JUNK | st.integers() | st.text(min_size=100, max_size=300))
    head = _json_bytes(request)
    headers: dict[str, str] = {}
    if binary and "no header" not in applied:
        headers[HEADER] = str(len(head))
    if "header length" in applied:
        headers[HEADER] = draw(
            st.sampled_from(
                [len(head) - 1, len(head) + 1, 0, len(head) + len(payload), len(head) + 10**6]
            ).map(str)
            | st.integers(-5, 10**19).map(str)
            | st.sampled_from(["", "0x10", "1e3", "+5", "9" * 30, "١٢"])
            | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=6)
        )
    valid_rows_shape = len(shape) == 2 and type(shape[0]) is int and shape[0] >= 1
    return head + payload, headers, shape[0] if valid_rows_shape else None, applied


def _predict_path(name: str, version: str | None, raw_slashes: bool = False) -> str:
    base = f"/v1/models/{_segment(name, raw_slashes)}"
    return (
        f"{base}/predict" if version is None else f"{base}/versions/{_segment(version, raw_slashes)}/predict"
    )


def _infer_path(name: str, version: str | None, raw_slashes: bool = False) -> str:
    base = f"/v2/models/{_segment(name, raw_slashes)}"
    return f"{base}/infer" if version is None else f"{base}/versions/{_segment(version, raw_slashes)}/infer"


# ----------------------------------------------------------------------------------------------- native API
@FUZZ
@given(data=st.data())
def test_native_predict_survives_structured_bodies(client: httpx.Client, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(MODELS)), label="model")
    version = data.draw(st.none() | st.just("1"), label="version")
    body, applied = data.draw(native_predict_body(MODELS[name][0]), label="body")
    response = _post(client, _predict_path(name, version), _json_bytes(body))
    if not applied:
        assert response.status_code == 200, response.text[:300]
    if response.status_code == 200:
        _check_native_prediction(response, name, None)


@FUZZ
@given(
    route=st.sampled_from(["predict", "version", "condition"]),
    name=NAMES,
    body=GARBAGE_BODIES,
    content_type=st.sampled_from(["application/json", "application/octet-stream", "text/plain", ""]),
)
def test_native_routes_survive_garbage_bodies(
    client: httpx.Client, route: str, name: str, body: bytes, content_type: str
) -> None:
    segment = _segment(name, False)
    path = {
        "predict": f"/v1/models/{segment}/predict",
        "version": f"/v1/models/{segment}/versions/1/predict",
        "condition": f"/v1/models/{segment}/condition",
    }[route]
    response = _post(client, path, body, {"content-type": content_type} if content_type else None)
    if response.status_code == 200:  # a mutation can leave valid JSON behind (trailing whitespace, say)
        if route == "condition":
            _check_condition(response, name)
        else:
            _check_native_prediction(response, name, None)


@FUZZ
@given(
    name=NAMES,
    version=st.none() | VERSIONS,
    raw_slashes=st.booleans(),
    route=st.sampled_from(["predict", "condition"]),
)
def test_native_routes_survive_unknown_and_weird_names(
    client: httpx.Client, name: str, version: str | None, raw_slashes: bool, route: str
) -> None:
    in_dim = MODELS.get(name, (3, 2))[0]
    body = (
        {"inputs": [[0.5] * in_dim], "observed": [{"y0": 0.0}]}
        if route == "condition"
        else {"inputs": [[0.5] * in_dim]}
    )
    path = _predict_path(name, version, raw_slashes)
    if route == "condition":
        path = f"/v1/models/{_segment(name, raw_slashes)}/condition"
    response = _post(client, path, _json_bytes(body))
    if response.status_code == 200:
        assert name in MODELS
        if route == "predict":
            _check_native_prediction(response, name, 1)
        else:
            _check_condition(response, name)
    elif name in MODELS and version is None:
        pytest.fail(f"a valid request to {name!r} failed: {response.text[:300]}")


@FUZZ
@given(data=st.data())
def test_native_condition_survives_structured_bodies(client: httpx.Client, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(MODELS)), label="model")
    body, applied = data.draw(condition_body(*MODELS[name]), label="body")
    response = _post(client, f"/v1/models/{name}/condition", _json_bytes(body))
    if not applied:
        assert response.status_code == 200, response.text[:300]
    if response.status_code == 200:
        _check_condition(response, name)


@FUZZ
@given(data=st.data())
def test_native_valid_requests_always_succeed(client: httpx.Client, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(MODELS)), label="model")
    in_dim, out_dim = MODELS[name]
    rows = data.draw(valid_rows(in_dim), label="rows")
    outputs = data.draw(st.lists(st.sampled_from(NATIVE_OUTPUTS), min_size=1, unique=True), label="outputs")
    level = data.draw(st.floats(1e-6, 1 - 1e-6), label="level")
    use_instances = data.draw(st.booleans(), label="instances")
    body: dict[str, Any] = {"outputs": [*outputs, "covariance"], "level": level}
    if use_instances:
        body["instances"] = [{f"x{i}": value for i, value in enumerate(row)} for row in rows]
    else:
        body["inputs"] = rows
    response = _post(client, f"/v1/models/{name}/predict", _json_bytes(body))
    assert response.status_code == 200, response.text[:300]
    _check_native_prediction(response, name, len(rows))
    observed = data.draw(
        st.lists(st.sampled_from([f"y{i}" for i in range(out_dim)]), max_size=out_dim - 1, unique=True)
    )
    values = st.floats(-1e3, 1e3) | st.floats(-FLOAT32_MAX, FLOAT32_MAX)
    body = {"inputs": rows, "observed": [{key: data.draw(values) for key in observed} for _ in rows]}
    response = _post(client, f"/v1/models/{name}/condition", _json_bytes(body))
    assert response.status_code == 200, response.text[:300]
    _check_condition(response, name)


# ----------------------------------------------------------------------------------------- inference protocol
@FUZZ
@given(data=st.data())
def test_oip_infer_survives_structured_requests(client: httpx.Client, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(MODELS)), label="model")
    version = data.draw(st.none() | st.just("1"), label="version")
    body, headers, rows, applied = data.draw(oip_request(MODELS[name][0]), label="request")
    response = _post(client, _infer_path(name, version), body, headers)
    if not applied:
        assert response.status_code == 200, response.text[:300]
    if response.status_code == 200:
        _check_oip_prediction(response, name, rows)


@FUZZ
@given(
    name=NAMES,
    version=st.none() | st.just("1"),
    body=GARBAGE_BODIES,
    header=st.none()
    | st.integers(-3, 300).map(str)
    | st.sampled_from(["", "5 5", "1e3", "0x10", "9" * 30, "+1", "-0"])
    | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8),
)
def test_oip_infer_survives_garbage_bodies(
    client: httpx.Client, name: str, version: str | None, body: bytes, header: str | None
) -> None:
    headers = {HEADER: header} if header is not None else None
    response = _post(client, _infer_path(name, version), body, headers)
    if response.status_code == 200:
        _check_oip_prediction(response, name, None)


@FUZZ
@given(name=NAMES, version=st.none() | VERSIONS, raw_slashes=st.booleans(), binary=st.booleans())
def test_oip_infer_survives_unknown_and_weird_names(
    client: httpx.Client, name: str, version: str | None, raw_slashes: bool, binary: bool
) -> None:
    in_dim = MODELS.get(name, (3, 2))[0]
    rows = np.linspace(-1.0, 1.0, 2 * in_dim, dtype=np.float32).reshape(2, in_dim)
    tensor: dict[str, Any] = {"name": "x", "shape": [2, in_dim], "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": rows.nbytes}
        head = _json_bytes({"inputs": [tensor]})
        body, headers = head + rows.tobytes(), {HEADER: str(len(head))}
    else:
        body, headers = _json_bytes({"inputs": [{**tensor, "data": rows.ravel().tolist()}]}), {}
    response = _post(client, _infer_path(name, version, raw_slashes), body, headers)
    if response.status_code == 200:
        assert name in MODELS
        _check_oip_prediction(response, name, 2)
    elif name in MODELS and version is None:
        pytest.fail(f"a valid request to {name!r} failed: {response.text[:300]}")


@FUZZ
@given(data=st.data())
def test_oip_valid_requests_always_succeed(client: httpx.Client, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(MODELS)), label="model")
    in_dim, _ = MODELS[name]
    rows = np.asarray(data.draw(valid_rows(in_dim), label="rows"), dtype=np.float64)
    datatype = data.draw(st.sampled_from(["FP32", "FP64"]), label="datatype")
    array = rows.astype(NUMPY_TYPES[datatype])
    tensor: dict[str, Any] = {"name": "x", "shape": list(array.shape), "datatype": datatype}
    outputs = data.draw(st.lists(st.sampled_from(OIP_OUTPUTS), unique=True), label="outputs")
    binary_out = data.draw(st.booleans(), label="binary outputs")
    request: dict[str, Any] = {
        "inputs": [tensor],
        "outputs": [{"name": output, "parameters": {"binary_data": binary_out}} for output in outputs],
    }
    if data.draw(st.booleans(), label="binary input"):
        tensor["parameters"] = {"binary_data_size": array.nbytes}
        head = _json_bytes(request)
        body, headers = head + array.tobytes(), {HEADER: str(len(head))}
    else:
        tensor["data"] = array.tolist()
        body, headers = _json_bytes(request), {}
    response = _post(client, _infer_path(name, "1"), body, headers)
    assert response.status_code == 200, response.text[:300]
    _check_oip_prediction(response, name, len(rows))


def _representable(values: Any) -> bool:
    """Whether every value is finite once cast to float32, the dtype the models compute in."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.asarray(values, dtype=np.float64).astype(np.float32)).all())


@FUZZ
@given(data=st.data())
def test_native_answers_200_exactly_for_values_finite_in_float32(
    client: httpx.Client, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(list(MODELS)), label="model")
    in_dim, out_dim = MODELS[name]
    values = CLEAN | FINITE_EXTREMES
    rows = data.draw(
        st.lists(st.lists(values, min_size=in_dim, max_size=in_dim), min_size=1, max_size=4), label="rows"
    )
    level = data.draw(st.floats(0, 1, exclude_min=True, exclude_max=True), label="level")
    body = {"inputs": rows, "outputs": list(NATIVE_OUTPUTS), "level": level}
    response = _post(client, f"/v1/models/{name}/predict", _json_bytes(body))
    if _representable(rows) and (1.0 + level) / 2.0 < 1.0:
        assert response.status_code == 200, response.text[:300]
        _check_native_prediction(response, name, len(rows))
    else:
        assert response.status_code == 400, response.text[:300]

    targets = [f"y{i}" for i in range(out_dim)]
    keys = data.draw(
        st.lists(st.sampled_from(targets), min_size=1, max_size=out_dim - 1, unique=True), label="keys"
    )
    observed = [{key: data.draw(values, label=key) for key in keys} for _ in rows]
    response = _post(
        client, f"/v1/models/{name}/condition", _json_bytes({"inputs": rows, "observed": observed})
    )
    in_range = all(abs(value) <= FLOAT32_MAX for mapping in observed for value in mapping.values())
    if _representable(rows) and in_range:
        assert response.status_code == 200, response.text[:300]
        _check_condition(response, name)
    else:
        assert response.status_code == 400, response.text[:300]


@FUZZ
@given(data=st.data())
def test_oip_answers_200_exactly_for_values_finite_in_float32(
    client: httpx.Client, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(list(MODELS)), label="model")
    in_dim, _ = MODELS[name]
    datatype = data.draw(st.sampled_from(["FP16", "FP32", "FP64"]), label="datatype")
    dtype = np.dtype(NUMPY_TYPES[datatype])
    binary = data.draw(st.booleans(), label="binary")
    rows = data.draw(st.integers(1, 4), label="rows")
    floats = BINARY_FLOATS[dtype.itemsize]
    if not binary:  # JSON has no NaN or infinity
        floats = floats.filter(math.isfinite)
    values = data.draw(
        st.lists(floats | CLEAN, min_size=rows * in_dim, max_size=rows * in_dim), label="values"
    )
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.asarray(values, dtype=np.float64).astype(dtype).reshape(rows, in_dim)
    tensor: dict[str, Any] = {"name": "x", "shape": [rows, in_dim], "datatype": datatype}
    if binary:
        tensor["parameters"] = {"binary_data_size": array.nbytes}
        head = _json_bytes({"inputs": [tensor]})
        body, headers = head + array.tobytes(), {HEADER: str(len(head))}
    else:
        tensor["data"] = array.tolist()
        body, headers = _json_bytes({"inputs": [tensor]}), {}
    response = _post(client, f"/v2/models/{name}/infer", body, headers)
    if _representable(array):
        assert response.status_code == 200, response.text[:300]
        _check_oip_prediction(response, name, rows)
    else:
        assert response.status_code == 400, response.text[:300]


# ------------------------------------------------------------------------------------------------ concurrency
def _valid_request(index: int) -> tuple[str, bytes, dict[str, str]]:
    generator = np.random.default_rng(index)
    if index % 2:
        rows = generator.normal(size=(1 + index % 5, 3)).astype(np.float32)
        tensor = {
            "name": "x",
            "shape": list(rows.shape),
            "datatype": "FP32",
            "parameters": {"binary_data_size": rows.nbytes},
        }
        head = _json_bytes({"inputs": [tensor]})
        return "/v2/models/alpha/infer", head + rows.tobytes(), {HEADER: str(len(head))}
    rows64 = generator.normal(size=(1 + index % 7, 2))
    return "/v1/models/beta/predict", _json_bytes({"inputs": rows64.tolist()}), {}


def _fire(url: str) -> list[httpx.Response]:
    barrier = threading.Barrier(CONCURRENT_REQUESTS)
    limits = httpx.Limits(max_connections=CONCURRENT_REQUESTS, max_keepalive_connections=CONCURRENT_REQUESTS)
    with httpx.Client(base_url=url, timeout=120.0, limits=limits) as shared:

        def one(index: int) -> httpx.Response:
            path, body, headers = _valid_request(index)
            barrier.wait()
            return shared.post(path, content=body, headers=headers)

        with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
            return list(pool.map(one, range(CONCURRENT_REQUESTS)))


@pytest.mark.parametrize("queue", ["default", "tight"])
def test_concurrent_valid_requests_get_200_or_503_with_retry_after(
    server: str, repository: Path, queue: str
) -> None:
    if queue == "default":
        responses = _fire(server)
    else:
        tight = Settings(repository=repository, max_rows=MAX_ROWS, threads=1, workers=1, max_queue=1)
        with running_server(tight) as url:
            responses = _fire(url)
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    for response in responses:
        if response.status_code == 503:
            assert response.headers.get("retry-after"), response.headers
            assert isinstance(response.json()["error"], str)
        elif response.url.path.startswith("/v2/"):
            _check_oip_prediction(response, "alpha", None)
        else:
            _check_native_prediction(response, "beta", None)
    assert statuses.count(200) >= 1
    defaults = Settings(repository=repository)
    if queue == "default" and defaults.workers + defaults.max_queue >= CONCURRENT_REQUESTS:
        assert statuses.count(200) == CONCURRENT_REQUESTS  # the queue cannot fill up


# ---------------------------------------------------------------------------------------------- known issues
def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    document = _json_bytes({"inputs": [[1.0, 2.0]]})
    padded = document[:-1] + b" " * (2 * MAX_BODY_BYTES) + b"}"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(padded), 8192):
            yield padded[start : start + 8192]

    response = client.post("/v1/models/beta/predict", content=chunks())
    _check_response(response, "/v1/models/beta/predict")
    assert response.status_code == 413, response.text[:200]

"""``service._oip`` against the real ``tritonclient.http`` encoder and decoder, and fuzzing of bad input.

Request bodies come from ``InferenceServerClient.generate_request_body`` (the code path ``infer`` uses) and
responses are read back with ``InferenceServerClient.parse_response_body`` / ``InferResult``: no hand-made
stand-ins for the client. Hypothesis then throws random bytes, truncated payloads, wrong header lengths,
random JSON and huge shapes at the parser, which must answer with a 400 or 413 domain error and nothing else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from covserve.service._errors import ModelFailureError, ServiceError
from covserve.service._oip import (
    HEADER_LENGTH_HEADER,
    KNOWN_DATATYPES,
    SUPPORTED_DATATYPES,
    InferRequest,
    OutputRequest,
    encode_infer_response,
    parse_infer_request,
)
from covserve.service._responses import service_error_response

__all__: list[str] = []

CLIENT: Final = triton_http.InferenceServerClient
MAX_ELEMENTS: Final = 1 << 20
FEATURES: Final = 8
TARGETS: Final = 3
ROW_COUNTS: Final = (1, 256)
FLOAT_DATATYPES: Final[dict[str, type[np.floating[Any]]]] = {"FP32": np.float32, "FP64": np.float64}
HUGE_SHAPE_LIMIT: Final = 1000
CLIENT_ERROR_STATUSES: Final = frozenset({400, 413})
FUZZ: Final = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL: Final = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------- helpers
def _features(rows: int, dtype: type[np.floating[Any]], seed: int = 0) -> NDArray[Any]:
    """Deterministic awkward floats (not short decimals) so that any precision loss would show."""
    return np.random.default_rng(seed).normal(scale=1e3, size=(rows, FEATURES)).astype(dtype)


def _triton_input(name: str, array: NDArray[Any], binary: bool) -> Any:
    """A ``tritonclient.http.InferInput`` holding ``array``."""
    tensor = triton_http.InferInput(name, list(array.shape), _datatype(array))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _datatype(array: NDArray[Any]) -> str:
    """The OIP datatype tritonclient uses for ``array``."""
    return str(triton_http.np_to_triton_dtype(array.dtype))


def _client_body(inputs: Sequence[Any], **kwargs: Any) -> tuple[bytes, str | None]:
    """The body and ``Inference-Header-Content-Length`` value the sync client would send."""
    body, json_size = CLIENT.generate_request_body(list(inputs), **kwargs)
    return bytes(body), None if json_size is None else str(json_size)


def _parse(body: bytes, header: str | None, max_elements: int = MAX_ELEMENTS) -> InferRequest:
    """``parse_infer_request`` with a generous element limit."""
    return parse_infer_request(body, header, max_elements)


def _client_read(body: bytes, headers: dict[str, str]) -> Any:
    """The ``InferResult`` tritonclient builds from our response body and headers."""
    length = headers.get(HEADER_LENGTH_HEADER)
    return CLIENT.parse_response_body(
        body, verbose=False, header_length=None if length is None else int(length), content_encoding=None
    )


def _status(error: ServiceError) -> int:
    """The HTTP status the app answers ``error`` with."""
    return service_error_response(error).status_code


def _assert_client_error(call: Callable[[], object]) -> ServiceError | None:
    """Run ``call``: it either succeeds or raises a 400/413 error -- any other exception fails the test."""
    caught: ServiceError | None = None
    try:
        call()
    except ServiceError as error:
        caught = error
    if caught is not None:
        assert _status(caught) in CLIENT_ERROR_STATUSES, caught.message
        assert caught.message
    return caught


def _assert_rejected(call: Callable[[], object], status: int, context: object) -> None:
    """``call`` raises an error answered with exactly ``status``."""
    error = _assert_client_error(call)
    assert error is not None, context
    assert _status(error) == status, (context, error.message)


def _expect_error(
    body: bytes, header: str | None, status: int, *fragments: str, max_elements: int = 64
) -> None:
    """Parsing fails with ``status`` and a message containing every fragment."""
    with pytest.raises(ServiceError) as caught:
        parse_infer_request(body, header, max_elements)
    assert _status(caught.value) == status, caught.value.message
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message


def _json_body(document: object) -> bytes:
    """``document`` serialised by the standard library (which also writes NaN and big integers)."""
    return json.dumps(document).encode()


_OMIT: Final = object()
"""Marks a field ``_one_input`` leaves out of the input."""


def _one_input(**fields: object) -> bytes:
    """A JSON-only request with one input made of ``fields`` (defaults: a valid FP32 [2] input)."""
    tensor: dict[str, object] = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    tensor.update(fields)
    return _json_body({"inputs": [{k: v for k, v in tensor.items() if v is not _OMIT}]})


def _nested(depth: int) -> list[Any]:
    """``[1.0]`` wrapped in lists until it is ``depth`` lists deep."""
    data: list[Any] = [1.0]
    for _ in range(depth - 1):
        data = [data]
    return data


# ----------------------------------------------------------------------------- requests from the real client
@pytest.mark.parametrize("datatype", sorted(FLOAT_DATATYPES))
@pytest.mark.parametrize("rows", ROW_COUNTS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_client_request_round_trips(datatype: str, rows: int, binary: bool) -> None:
    features = _features(rows, FLOAT_DATATYPES[datatype])
    outputs = [
        triton_http.InferRequestedOutput("mean", binary_data=False),
        triton_http.InferRequestedOutput("covariance", binary_data=True),
    ]
    body, header = _client_body([_triton_input("x", features, binary)], outputs=outputs, request_id="req-7")
    assert (header is not None) == binary

    request = _parse(body, header)

    assert request.id == "req-7"
    (tensor,) = request.inputs
    assert tensor.name == "x"
    assert tensor.shape == (rows, FEATURES)
    assert tensor.datatype == datatype
    assert tensor.data.dtype == features.dtype
    assert tensor.data.shape == features.shape
    np.testing.assert_array_equal(tensor.data, features, strict=True)
    assert not tensor.data.flags.writeable
    assert request.outputs == (OutputRequest("mean", False), OutputRequest("covariance", True))
    assert request.binary_output_default is False
    assert request.binary_for("mean") is False
    assert request.binary_for("covariance") is True


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_default_client_request_asks_for_all_outputs_in_binary(binary: bool) -> None:
    body, header = _client_body([_triton_input("x", _features(2, np.float32), binary)])
    request = _parse(body, header)
    assert request.id is None
    assert request.outputs is None
    assert request.binary_output_default is True
    assert request.binary_for("mean") is True


def test_outputs_without_binary_flag_follow_the_request_default() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    document = {"inputs": [tensor], "outputs": [{"name": "mean"}], "parameters": {"binary_data_output": True}}
    request = _parse(_json_body(document), None)
    assert request.outputs == (OutputRequest("mean", None),)
    assert request.binary_for("mean") is True
    assert request.binary_for("covariance") is True
    empty = _parse(_json_body({"inputs": [tensor], "outputs": []}), None)
    assert empty.outputs is None
    assert empty.binary_output_default is False


def test_mixed_binary_and_json_inputs_keep_their_order_and_offsets() -> None:
    first = _features(3, np.float32, seed=1)
    second = np.arange(12, dtype=np.int64).reshape(4, 3) - 6
    third = _features(5, np.float64, seed=2)
    inputs = [
        _triton_input("a", first, True),
        _triton_input("b", second, False),
        _triton_input("c", third, True),
    ]
    body, header = _client_body(inputs, request_id="mixed", priority=3, timeout=1000)
    request = _parse(body, header)
    assert [tensor.name for tensor in request.inputs] == ["a", "b", "c"]
    for tensor, expected in zip(request.inputs, (first, second, third), strict=True):
        np.testing.assert_array_equal(tensor.data, expected, strict=True)


@pytest.mark.parametrize("datatype", sorted(SUPPORTED_DATATYPES))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_numeric_datatype_round_trips(datatype: str, binary: bool) -> None:
    dtype = triton_http.triton_to_np_dtype(datatype)
    values = np.arange(-6, 6).reshape(2, 2, 3)
    array = (values if np.dtype(dtype).kind != "u" else values + 6).astype(dtype)
    body, header = _client_body([_triton_input("t", array, binary)])
    (tensor,) = _parse(body, header).inputs
    assert tensor.datatype == datatype
    np.testing.assert_array_equal(tensor.data, array, strict=True)


def test_binary_inputs_carry_non_finite_values_bit_exactly() -> None:
    array = np.array([[np.nan, np.inf, -np.inf, -0.0, 5e-324, np.finfo(np.float64).max]])
    body, header = _client_body([_triton_input("x", array, True)])
    (tensor,) = _parse(body, header).inputs
    assert tensor.data.tobytes() == array.tobytes()


def test_header_covering_the_whole_body_and_spaces_around_it_are_accepted() -> None:
    body, header = _client_body([_triton_input("x", _features(2, np.float32), False)])
    assert header is None
    for value in (str(len(body)), f" {len(body)} "):  # perf_analyzer always sends the header
        (tensor,) = _parse(body, value).inputs
        assert tensor.shape == (2, FEATURES)


def test_nested_json_data_is_accepted_like_triton() -> None:
    nested = _one_input(shape=[2, 2], data=[[1.5, 2], [3, 4]])
    flat = _one_input(shape=[2, 2], data=[1.5, 2, 3, 4])
    for body in (nested, flat):
        (tensor,) = _parse(body, None).inputs
        np.testing.assert_array_equal(
            tensor.data, np.array([[1.5, 2], [3, 4]], dtype=np.float32), strict=True
        )
    (deep,) = _parse(_one_input(shape=[4], data=[[[1, 2]], [[3, 4]]]), None).inputs
    np.testing.assert_array_equal(deep.data, np.array([1, 2, 3, 4], dtype=np.float32), strict=True)
    (empty,) = _parse(_one_input(shape=[2, 0], data=[[], []]), None).inputs
    assert empty.data.shape == (2, 0)


def test_element_limit_is_inclusive_and_counts_all_inputs() -> None:
    array = _features(2, np.float32)  # 16 elements
    body, header = _client_body([_triton_input("x", array, True)])
    assert _parse(body, header, max_elements=array.size).inputs[0].data.size == array.size
    _expect_error(body, header, 413, "inputs[0] ('x').shape", "16", max_elements=array.size - 1)
    pair, pair_header = _client_body([_triton_input("x", array, True), _triton_input("y", array, False)])
    _expect_error(pair, pair_header, 413, "over all inputs", max_elements=array.size + 1)


# ------------------------------------------------------------------------- responses read by the real client
def _outputs(rows: int, dtype: type[np.floating[Any]]) -> tuple[NDArray[Any], NDArray[Any]]:
    generator = np.random.default_rng(rows)
    mean = generator.normal(size=(rows, TARGETS)).astype(dtype)
    factor = generator.normal(size=(rows, TARGETS, TARGETS))
    covariance = (factor @ factor.transpose(0, 2, 1)).astype(dtype)
    return mean, covariance


@pytest.mark.parametrize("datatype", sorted(FLOAT_DATATYPES))
@pytest.mark.parametrize("rows", ROW_COUNTS)
@pytest.mark.parametrize(
    ("mean_binary", "covariance_binary"),
    [(True, True), (False, False), (False, True)],
    ids=["bin", "json", "mixed"],
)
def test_client_reads_our_response(
    datatype: str, rows: int, mean_binary: bool, covariance_binary: bool
) -> None:
    mean, covariance = _outputs(rows, FLOAT_DATATYPES[datatype])
    body, headers = encode_infer_response(
        "cov", "1", "req-9", [("mean", mean, mean_binary), ("covariance", covariance, covariance_binary)]
    )

    if mean_binary or covariance_binary:
        assert headers["Content-Type"] == "application/octet-stream"
        assert int(headers[HEADER_LENGTH_HEADER]) < len(body)
    else:
        assert headers == {"Content-Type": "application/json"}
    result = _client_read(body, headers)
    response = result.get_response()
    assert response["model_name"] == "cov"
    assert response["model_version"] == "1"
    assert response["id"] == "req-9"
    described = [(o["name"], o["datatype"], o["shape"]) for o in response["outputs"]]
    assert described == [
        ("mean", datatype, [rows, TARGETS]),
        ("covariance", datatype, [rows, TARGETS, TARGETS]),
    ]
    # orjson writes the shortest repr of each float32/float64, so even JSON outputs come back exactly.
    np.testing.assert_array_equal(result.as_numpy("mean"), mean, strict=True)
    np.testing.assert_array_equal(result.as_numpy("covariance"), covariance, strict=True)
    if not covariance_binary:
        assert isinstance(result.get_output("covariance")["data"][0], float)  # flattened, not nested


def test_response_omits_absent_id_and_version_and_handles_odd_layouts() -> None:
    base = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    strided = base.transpose(2, 0, 1)  # not C-contiguous
    swapped = base.astype(">f4")  # big-endian
    empty = np.zeros((0, TARGETS), dtype=np.float32)
    for binary in (True, False):
        outputs = [("strided", strided, binary), ("swapped", swapped, binary), ("empty", empty, binary)]
        body, headers = encode_infer_response("cov", "", None, outputs)
        result = _client_read(body, headers)
        assert "id" not in result.get_response()
        assert "model_version" not in result.get_response()
        np.testing.assert_array_equal(result.as_numpy("strided"), strided)
        np.testing.assert_array_equal(result.as_numpy("swapped"), swapped.astype(np.float32))
        assert result.as_numpy("empty").shape == (0, TARGETS)


def test_non_finite_outputs_go_out_binary_only() -> None:
    values = np.array([[np.nan, np.inf, -np.inf, 1.0]], dtype=np.float32)
    body, headers = encode_infer_response("cov", "1", None, [("mean", values, True)])
    assert _client_read(body, headers).as_numpy("mean").tobytes() == values.tobytes()
    with pytest.raises(ModelFailureError) as caught:
        encode_infer_response("cov", "1", None, [("mean", values, False)])
    assert _status(caught.value) == 500
    assert "'mean'" in caught.value.message
    assert "binary_data" in caught.value.message


def test_non_numeric_output_dtype_is_a_server_bug() -> None:
    with pytest.raises(TypeError, match="no OIP datatype"):
        encode_infer_response("cov", "1", None, [("names", np.array(["a"]), False)])


@given(
    array=hnp.arrays(
        dtype=st.sampled_from(
            sorted({dtype.newbyteorder("=") for dtype in SUPPORTED_DATATYPES.values()}, key=str)
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    ),
    binary=st.booleans(),
)
@FUZZ_SMALL
def test_any_array_round_trips_bit_exactly(array: NDArray[Any], binary: bool) -> None:
    """Client -> parser and encoder -> client are lossless for every numeric dtype and shape.

    JSON carries finite values only, so arrays holding NaN or infinities travel binary both ways.
    """
    wire_binary = binary or (array.dtype.kind == "f" and not np.isfinite(array).all())
    body, header = _client_body([_triton_input("x", array, wire_binary)])
    (tensor,) = _parse(body, header).inputs
    assert tensor.shape == array.shape
    assert tensor.data.dtype == array.dtype
    assert tensor.data.tobytes() == array.tobytes()
    response, headers = encode_infer_response("m", "1", "r", [("y", array, wire_binary)])
    back = _client_read(response, headers).as_numpy("y")
    assert back.shape == array.shape
    assert back.dtype == array.dtype
    assert back.tobytes() == array.tobytes()


# --------------------------------------------------------------------------------------- specific rejections
GOOD_HEADER_BODY: Final = _one_input()
ONE_INPUT: Final = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}


@pytest.mark.parametrize(
    ("body", "header", "status", "fragments"),
    [
        (GOOD_HEADER_BODY, "abc", 400, (HEADER_LENGTH_HEADER, "non-negative integer", "'abc'")),
        (GOOD_HEADER_BODY, "-1", 400, (HEADER_LENGTH_HEADER, "'-1'")),
        (GOOD_HEADER_BODY, "1_0", 400, (HEADER_LENGTH_HEADER,)),
        (GOOD_HEADER_BODY, "", 400, (HEADER_LENGTH_HEADER,)),
        (GOOD_HEADER_BODY, "9" * 5000, 400, (HEADER_LENGTH_HEADER, "non-negative integer")),
        (GOOD_HEADER_BODY, "\u0661", 400, (HEADER_LENGTH_HEADER,)),
        (GOOD_HEADER_BODY, str(len(GOOD_HEADER_BODY) + 1), 400, ("at most the body length",)),
        (GOOD_HEADER_BODY, "0", 400, ("request JSON", "parse error")),
        (b"", None, 400, ("request JSON",)),
        (b"{not json", None, 400, ("request JSON",)),
        (b"\xff\xfe{}", None, 400, ("request JSON",)),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', None, 400,
         ("JSON",)),
        (b"[1, 2]", None, 400, ("expected an object", "list")),
        (b"{}", None, 400, ("inputs", "expected this field", "nothing")),
        (_json_body({"inputs": []}), None, 400, ("inputs", "at least 1")),
        (_json_body({"inputs": {"x": 1}}), None, 400, ("inputs", "list")),
        (_one_input(name=_OMIT), None, 400, ("inputs[0].name", "nothing")),
        (_one_input(name=""), None, 400, ("inputs[0].name",)),
        (_one_input(name=3), None, 400, ("inputs[0].name", "string", "3")),
        (_one_input(shape=_OMIT), None, 400, ("inputs[0].shape", "nothing")),
        (_one_input(shape=[2, -1]), None, 400, ("inputs[0].shape[1]", "greater than or equal to 0", "-1")),
        (_one_input(shape=[2.0]), None, 400, ("inputs[0].shape[0]", "integer", "2.0")),
        (_one_input(shape=[True]), None, 400, ("inputs[0].shape[0]", "True")),
        (_one_input(shape="2"), None, 400, ("inputs[0].shape", "list")),
        (_one_input(shape=[1] * 33), None, 400, ("inputs[0].shape", "at most 32")),
        (_one_input(datatype=_OMIT), None, 400, ("inputs[0].datatype", "nothing")),
        (_one_input(datatype="BYTES"), None, 400,
         ("inputs[0] ('x').datatype", "numeric datatype", "'BYTES'")),
        (_one_input(datatype="BOOL"), None, 400, ("numeric datatype", "'BOOL'")),
        (_one_input(datatype="FP8"), None, 400, ("unsupported datatype", "'FP8'")),
        (_one_input(datatype="fp32"), None, 400, ("unsupported datatype",)),
        (_one_input(shape=[10**12]), None, 413, ("inputs[0] ('x').shape", "at most 64")),
        (_one_input(shape=[2**64 - 1, 2**64 - 1]), None, 413, ("shape[0]", "elements")),
        (_one_input(shape=[0, 10**12], data=[]), None, 413, ("shape[1]", "along any axis")),
        (_one_input(shape=[9, 9], data=[]), None, 413, ("shape", "81 elements")),
        (_one_input(data=_OMIT), None, 400, ("inputs[0] ('x').data", "got neither")),
        (_one_input(data=None), None, 400, ("got neither",)),
        (_one_input(data="1,2"), None, 400, ("data", "list of numbers", "str")),
        (_one_input(data=[1.0]), None, 400, ("data", "expected 2 elements", "got 1")),
        (_one_input(data=[1.0, 2.0, 3.0]), None, 400, ("expected 2 elements", "got 3")),
        (_one_input(data=[1.0, "2"]), None, 400, ("expected numbers for FP32", "'2'")),
        (_one_input(data=[1.0, None]), None, 400, ("expected numbers", "None")),
        (_one_input(data=[1.0, True]), None, 400, ("expected numbers", "True")),
        (_one_input(data=[1.0, {"v": 2}]), None, 400, ("expected numbers",)),
        (_one_input(data=[[1.0], 2.0]), None, 400, ("mix of lists and numbers",)),
        (_one_input(data=[[1.0], [[2.0]]]), None, 400, ("uniform depth",)),
        (_one_input(shape=[1], data=_nested(32)), None, 200, ()),
        (_one_input(shape=[1], data=_nested(33)), None, 400, ("nested at most 32 deep",)),
        (_one_input(data=[1e39, 1.0]), None, 400, ("range of FP32", "1e+39")),
        (_one_input(datatype="FP16", data=[7e4, 1.0]), None, 400, ("range of FP16",)),
        (_one_input(datatype="INT32", data=[1.5, 2]), None, 400, ("expected integers for INT32", "1.5")),
        (_one_input(datatype="INT8", data=[300, 2]), None, 400, ("[-128, 127]", "300")),
        (_one_input(datatype="UINT8", data=[-1, 2]), None, 400, ("[0, 255]", "-1")),
        (_one_input(datatype="UINT64", data=[2**64, 2]), None, 400, ("expected integers",)),
        (_one_input(parameters={"binary_data_size": 8}), None, 400, ("both",)),
        (_one_input(data=_OMIT, parameters={"binary_data_size": 8}), None, 400, ("no such header",)),
        (_one_input(data=_OMIT, parameters={"binary_data_size": -8}), None, 400, ("binary_data_size", "-8")),
        (_one_input(data=_OMIT, parameters={"binary_data_size": "8"}), None, 400,
         ("binary_data_size", "'8'")),
        (_json_body({"inputs": [ONE_INPUT] * 2}), None, 400, ("inputs[1].name", "unique", "'x'")),
        (_json_body({"id": 5, "inputs": []}), None, 400, ("id", "string", "5")),
        (_json_body({"inputs": [ONE_INPUT], "outputs": [{"parameters": {"binary_data": True}}]}), None, 400,
         ("outputs[0].name", "nothing")),
        (_json_body({"inputs": [ONE_INPUT], "outputs": [{"name": "m"}, {"name": "m"}]}), None, 400,
         ("outputs[1].name", "unique")),
        (_json_body({"inputs": [ONE_INPUT], "outputs": [{"name": "m", "parameters": {"binary_data": "1"}}]}),
         None, 400, ("outputs[0].parameters.binary_data", "boolean")),
        (_json_body({"inputs": [ONE_INPUT], "parameters": {"binary_data_output": 1}}), None, 400,
         ("parameters.binary_data_output",)),
    ],
)  # fmt: skip
def test_bad_requests_are_named_precisely(
    body: bytes, header: str | None, status: int, fragments: tuple[str, ...]
) -> None:
    if status == 200:
        assert _parse(body, header, max_elements=64).inputs
        return
    _expect_error(body, header, status, *fragments)


def test_binary_size_mismatches_truncation_and_leftovers() -> None:
    array = _features(2, np.float32)
    body, header = _client_body([_triton_input("x", array, True)])
    assert header is not None
    json_size = int(header)
    document = orjson.loads(body[:json_size])
    document["inputs"][0]["parameters"]["binary_data_size"] = array.nbytes - 4
    wrong = orjson.dumps(document)
    _expect_error(
        wrong + body[json_size:],
        str(len(wrong)),
        400,
        "binary_data_size",
        str(array.nbytes),
        str(array.nbytes - 4),
    )
    _expect_error(body[:-1], header, 400, "truncated", str(array.nbytes - 1))
    _expect_error(body + b"\0\0", header, 400, "binary tensor data", str(array.nbytes + 2))
    _expect_error(body, None, 400, "request JSON")  # binary bytes after the JSON without the header


def test_every_truncation_and_every_wrong_header_is_a_400() -> None:
    body, header = _client_body(
        [
            _triton_input("x", _features(4, np.float32), True),
            _triton_input("y", _features(1, np.float64), True),
        ],
        outputs=[triton_http.InferRequestedOutput("mean")],
        request_id="cut",
    )
    assert header is not None
    assert _parse(body, header).id == "cut"
    for cut in range(len(body)):
        _assert_rejected(lambda cut=cut: _parse(body[:cut], header), 400, cut)  # type: ignore[misc]
        short = str(min(cut, int(header)))
        _assert_rejected(lambda cut=cut, short=short: _parse(body[:cut], short), 400, cut)  # type: ignore[misc]
    for length in range(len(body) + 3):
        if length != int(header):
            _assert_rejected(lambda length=length: _parse(body, str(length)), 400, length)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------- fuzzing
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=24,
)
number_lists = st.recursive(
    st.lists(st.integers(-300, 300) | st.floats(-1e40, 1e40, allow_nan=False), max_size=6),
    lambda children: st.lists(children, max_size=3),
    max_leaves=12,
)
shapes = st.lists(
    st.integers(min_value=-2, max_value=6) | st.integers(min_value=0, max_value=2**64), max_size=5
)
datatypes = st.sampled_from(sorted(KNOWN_DATATYPES | {"FP8", "", "fp32"}))
input_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "y"]) | json_values,
        "shape": shapes | json_values,
        "datatype": datatypes | json_values,
        "data": number_lists | json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-4, 200) | json_values}
        )
        | json_values,
    },
)
output_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["mean", "covariance"]) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data": st.booleans() | json_values}),
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=4) | json_values,
        "inputs": st.lists(input_entries, max_size=3) | json_values,
        "outputs": st.lists(output_entries, max_size=3) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans() | json_values}),
    },
)
header_values = st.none() | st.integers(-5, 400).map(str) | st.text(max_size=6)


def _check_success(request: InferRequest) -> None:
    """Invariants of anything the parser accepts."""
    for tensor in request.inputs:
        assert tensor.data.shape == tensor.shape
        assert tensor.data.dtype == SUPPORTED_DATATYPES[tensor.datatype].newbyteorder("=")
        assert not tensor.data.flags.writeable
        assert tensor.data.size <= MAX_ELEMENTS


@given(body=st.binary(max_size=300), header=header_values)
@FUZZ
def test_random_bytes_only_raise_client_errors(body: bytes, header: str | None) -> None:
    _assert_client_error(lambda: _parse(body, header))


@given(
    document=requests, tail=st.binary(max_size=64), header_kind=st.sampled_from(["none", "json", "random"])
)
@FUZZ
def test_random_request_structures_only_raise_client_errors(
    document: dict[str, Any], tail: bytes, header_kind: str
) -> None:
    head = json.dumps(
        document
    ).encode()  # stdlib json: writes NaN/Infinity and big integers, as a bad client might
    body = head + tail if header_kind != "none" else head
    header = {"none": None, "json": str(len(head)), "random": str(len(tail))}[header_kind]
    outcome: list[InferRequest] = []
    _assert_client_error(lambda: outcome.append(_parse(body, header)))
    for request in outcome:
        _check_success(request)


@given(document=json_values, header=header_values)
@FUZZ_SMALL
def test_random_json_documents_only_raise_client_errors(document: Any, header: str | None) -> None:
    body = json.dumps(document).encode()
    _assert_client_error(lambda: _parse(body, header))


@given(
    shape=st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=8),
    binary=st.booleans(),
)
@FUZZ_SMALL
def test_huge_shapes_are_refused_before_any_data_is_read(shape: list[int], binary: bool) -> None:
    count = math.prod(shape)
    tensor: dict[str, Any] = {"name": "x", "shape": shape, "datatype": "FP64"}
    size = min(8 * count, 2**63)  # a JSON integer orjson keeps as an integer
    if binary:
        tensor["parameters"] = {"binary_data_size": size}
    else:
        tensor["data"] = []
    head = orjson.dumps({"inputs": [tensor]})
    call = partial(_parse, head, str(len(head)) if binary else None, max_elements=HUGE_SHAPE_LIMIT)
    if count > HUGE_SHAPE_LIMIT or max(shape) > HUGE_SHAPE_LIMIT:
        _assert_rejected(call, 413, shape)
    elif count > 0:
        _assert_rejected(call, 400, shape)
    else:
        assert call().inputs[0].data.shape == tuple(shape)

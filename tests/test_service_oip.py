"""Open Inference Protocol routes driven by the unmodified tritonclient (sync and aio, binary and JSON)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

ROWS = np.random.default_rng(5).normal(size=(6, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def server(serve: Callable[..., str]) -> str:
    """The fuzz suite's server configuration: one server for both."""
    return serve(max_rows=64, max_body_bytes=65536)


def _native(server: str) -> dict[str, np.ndarray]:
    body = httpx.post(
        f"{server}/v1/models/alpha/predict",
        json={"inputs": ROWS.tolist(), "outputs": ["mean", "covariance", "scale"]},
    ).json()["outputs"]
    return {name: np.asarray(value, dtype=np.float32) for name, value in body.items()}


def _inputs(binary: bool) -> list[triton.InferInput]:
    tensor = triton.InferInput("x", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    return [tensor]


@pytest.mark.parametrize("binary", [True, False])
def test_sync_client_matches_the_native_api(server: str, binary: bool) -> None:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("alpha")
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary) for name in ("mean", "covariance", "scale")
    ]
    result = client.infer("alpha", _inputs(binary), outputs=outputs, request_id="42")
    assert result.get_response()["id"] == "42"
    assert result.get_response()["model_version"] == "1"
    for name, expected in _native(server).items():
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-6, atol=1e-7)


def test_sync_client_default_request_gets_every_output_in_binary(server: str) -> None:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    result = client.infer("alpha", _inputs(True), model_version="1")
    names = {output["name"] for output in result.get_response()["outputs"]}
    assert names == {"mean", "covariance", "scale"}
    assert all("binary_data_size" in output["parameters"] for output in result.get_response()["outputs"])


def test_output_selection_returns_only_what_was_asked(server: str) -> None:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    result = client.infer(
        "alpha", _inputs(False), outputs=[triton.InferRequestedOutput("mean", binary_data=False)]
    )
    assert [output["name"] for output in result.get_response()["outputs"]] == ["mean"]
    assert result.as_numpy("covariance") is None


@pytest.mark.parametrize("binary", [True, False])
def test_aio_client_matches_the_native_api(server: str, binary: bool) -> None:
    async def run() -> dict[str, np.ndarray]:
        client = triton_aio.InferenceServerClient(server.removeprefix("http://"))
        try:
            assert await client.is_server_ready()
            outputs = [triton_aio.InferRequestedOutput(n, binary_data=binary) for n in ("mean", "covariance")]
            tensor = triton_aio.InferInput("x", list(ROWS.shape), "FP32")
            tensor.set_data_from_numpy(ROWS, binary_data=binary)
            result = await client.infer("alpha", [tensor], outputs=outputs)
            return {name: result.as_numpy(name) for name in ("mean", "covariance")}
        finally:
            await client.close()

    received = asyncio.run(run())
    expected = _native(server)
    for name, value in received.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7)


def test_metadata_config_and_statistics_for_perf_analyzer(server: str) -> None:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    metadata = client.get_model_metadata("beta")
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    assert {output["name"]: output["shape"] for output in metadata["outputs"]}["covariance"] == [-1, 3, 3]
    assert metadata["properties"]["execution_provider"] == "CPUExecutionProvider"
    config = client.get_model_config("beta")
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [2]}]
    before = client.get_inference_statistics("alpha", "1")["model_stats"][0]
    client.infer("alpha", _inputs(True))
    after = client.get_inference_statistics("alpha", "1")["model_stats"][0]
    assert after["version"] == "1"
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + len(ROWS)
    assert client.get_server_metadata()["name"] == "covserve"


@pytest.mark.parametrize(
    ("model", "shape", "message"),
    [
        ("delta", [6, 3], "delta"),
        ("alpha", [3, 6], "expected [B, 3]"),
    ],
)
def test_client_sees_the_server_error_message(
    server: str, model: str, shape: list[int], message: str
) -> None:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    tensor = triton.InferInput("x", shape, "FP32")
    tensor.set_data_from_numpy(ROWS.reshape(shape))
    with pytest.raises(InferenceServerException, match=message.replace("[", r"\[")):
        client.infer(model, [tensor])


def test_unknown_output_and_truncated_binary_body_are_400(server: str) -> None:
    request = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    unknown = httpx.post(f"{server}/v2/models/alpha/infer", json={**request, "outputs": [{"name": "median"}]})
    assert unknown.status_code == 400
    assert "median" in unknown.json()["error"]
    header = b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}'
    truncated = httpx.post(
        f"{server}/v2/models/alpha/infer",
        content=header + b"\x00" * 5,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert truncated.status_code == 400
    assert "error" in truncated.json()


def test_model_ready_of_an_unknown_version_is_not_200(server: str) -> None:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    assert not client.is_model_ready("alpha", "7")

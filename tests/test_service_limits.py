"""Bounded work per request and real timeouts, against a real uvicorn server on 127.0.0.1 (raw sockets
where the behaviour is below HTTP), and the roles of API and admin keys in process."""

from __future__ import annotations

import json
import logging
import select
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from covserve.service import Settings
from covserve.service._admission import BODY_OVERHEAD_BYTES, Admission
from covserve.service._connections import (
    MALFORMED_RESPONSE,
    OVER_CAPACITY_RESPONSE,
    header_timeout_response,
)
from covserve.service._errors import OverloadedError
from tests.service_fixtures import export_tiny_model, in_process_client, running_server

MAX_ROWS = 50
IDLE_SECONDS = 1
BODY_SECONDS = 0.5
HEADER_SECONDS = 0.5
SOCKET_TIMEOUT_SECONDS = 10.0


@pytest.fixture(scope="module")
def server(served_repository: Path) -> Iterator[str]:
    settings = Settings(
        repository=served_repository,
        threads=1,
        max_rows=MAX_ROWS,
        idle_timeout_seconds=IDLE_SECONDS,
        body_timeout_seconds=BODY_SECONDS,
        header_timeout_seconds=HEADER_SECONDS,
        max_connections=8,
    )
    with running_server(settings) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_SECONDS)
    return connection


def _response(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_declared_body_beyond_the_models_limit_is_refused_unread(server: str) -> None:
    with _connect(server) as connection:
        connection.sendall(
            b"POST /v1/models/alpha/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 16000000\r\n\r\n"
        )
        head, _, body = _response(connection).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    message = json.loads(body)["error"]
    assert message.startswith("body: at most ")
    assert f"for model 'alpha' ({MAX_ROWS} rows of 3 inputs), got 16000000" in message
    limit = int(message.split()[3])
    assert BODY_OVERHEAD_BYTES < limit < BODY_OVERHEAD_BYTES + MAX_ROWS * 500


def test_rows_beyond_the_limit_are_refused_before_validation(server: str) -> None:
    rows: list[list[object]] = [[0.0, 0.0, 0.0]] * (MAX_ROWS + 1)
    rows[-1] = ["not", "a", "number"]  # validation would name this cell; the count comes first
    answered = httpx.post(f"{server}/v1/models/alpha/predict", json={"inputs": rows})
    assert answered.status_code == 413
    assert answered.json() == {"error": f"inputs: at most {MAX_ROWS} rows per request, got {MAX_ROWS + 1}"}


def test_a_body_that_never_completes_is_a_408(server: str) -> None:
    with _connect(server) as connection:
        connection.sendall(
            b'POST /v1/models/alpha/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"inputs"'
        )
        head, _, body = _response(connection).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {"error": f"body: not complete within {BODY_SECONDS:g} s (received 9 bytes)"}


def test_a_refused_upload_sent_whole_gets_its_answer_and_a_clean_close(server: str) -> None:
    """A client that sends its whole body before reading (as ``http.client`` does) gets the 413, marked
    ``connection: close``, then the end of the stream: the server discards the rest instead of resetting
    the connection under it (a broken pipe here, and the answer lost)."""
    declared = 16_000_000
    with _connect(server) as connection:
        connection.sendall(
            b"POST /v1/models/alpha/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {declared}\r\n\r\n".encode()
            + b" " * declared
        )
        answer = _response(connection)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"\r\nconnection: close" in head
    assert json.loads(body)["error"].startswith("body: at most ")


def test_a_small_unread_body_keeps_the_connection(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        missing = client.post("/v1/models/nope/predict", json={"inputs": [[1.0, 2.0, 3.0]]})
        answered = client.post("/v1/models/alpha/predict", json={"inputs": [[1.0, 2.0, 3.0]]})
    assert missing.status_code == 404
    assert "connection" not in missing.headers
    assert answered.status_code == 200
    assert answered.extensions["network_stream"] is missing.extensions["network_stream"]


def test_headers_sent_a_byte_at_a_time_are_a_408_after_the_header_timeout(server: str) -> None:
    request = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 100
    with _connect(server) as connection:
        started = time.monotonic()
        for byte in request:
            if select.select([connection], [], [], 0)[0]:
                break  # the server answered: stop sending
            connection.sendall(bytes([byte]))
            time.sleep(0.02)
        answer = _response(connection)
        elapsed = time.monotonic() - started
    assert answer == header_timeout_response(HEADER_SECONDS)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json")
    assert answer.endswith(b'{"error":"headers: not complete within 0.5 s of the request\'s first byte"}')
    assert HEADER_SECONDS * 0.9 <= elapsed < len(request) * 0.02


def test_bytes_that_are_not_http_get_a_json_400_and_a_close(server: str) -> None:
    with _connect(server) as connection:
        connection.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert _response(connection) == MALFORMED_RESPONSE
    head, _, body = MALFORMED_RESPONSE.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json")
    assert json.loads(body)["error"].startswith("request: not a valid HTTP/1.1 request")


def test_a_silent_connection_is_closed_after_the_idle_timeout(server: str) -> None:
    with _connect(server) as connection:
        opened = time.monotonic()
        assert connection.recv(1) == b""  # closed by the server, nothing sent
        assert time.monotonic() - opened >= IDLE_SECONDS * 0.9


def test_connections_beyond_the_cap_get_a_503_and_the_others_still_work(server: str) -> None:
    held = [_connect(server) for _ in range(8)]
    try:
        with _connect(server) as refused:
            assert _response(refused) == OVER_CAPACITY_RESPONSE
        answered = held[0]
        answered.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        assert answered.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for connection in held:
            connection.close()


def test_strings_and_booleans_are_not_numbers(server: str) -> None:
    answered = httpx.post(f"{server}/v1/models/alpha/predict", json={"inputs": [[True, False, 2]]})
    assert answered.status_code == 400
    assert answered.json() == {"error": "inputs.0.0: Input should be a valid number"}
    level = httpx.post(f"{server}/v1/models/alpha/predict", json={"inputs": [[1, 2, 3]], "level": "0.9"})
    assert level.status_code == 400
    assert httpx.post(f"{server}/v1/models/alpha/predict", json={"inputs": [[1, 2.5, 3]]}).status_code == 200


@pytest.mark.parametrize("version", ["01", "0", "007"])
def test_a_version_with_a_leading_zero_is_not_a_version(server: str, version: str) -> None:
    answered = httpx.post(f"{server}/v1/models/beta/versions/{version}/predict", json={"inputs": [[1, 2]]})
    assert answered.status_code == 400
    assert answered.json() == {"error": f"version: expected a positive integer, got '{version}'"}


def test_two_authorization_headers_are_refused(server: str) -> None:
    headers = [("authorization", "Bearer a"), ("authorization", "Bearer b")]
    answered = httpx.get(f"{server}/v1/models", headers=headers)
    assert answered.status_code == 400
    assert answered.json() == {"error": "authorization: expected one Authorization header, got several"}


def test_405_names_the_allowed_method(server: str) -> None:
    answered = httpx.get(f"{server}/v1/models/alpha/predict")
    assert answered.status_code == 405
    assert answered.headers["allow"] == "POST"
    assert answered.json() == {"error": "GET /v1/models/alpha/predict: Method Not Allowed"}


def test_an_input_the_model_cannot_answer_is_a_422(tmp_path: Path) -> None:
    """Inputs in float32's range that standardise to infinity (a model trained on inputs of spread 1e-3)."""
    export_tiny_model(tmp_path, "narrow", in_dim=2, out_dim=2, kind="cholesky", seed=0, input_scale=1e-3)
    extreme = float(np.finfo(np.float32).max)
    with in_process_client(Settings(repository=tmp_path, threads=1)) as client:
        answered = client.post("/v1/models/narrow/predict", json={"inputs": [[0.5, 1.5], [extreme, 1.0]]})
        infer = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [extreme, 1.0]}]}
        oip = client.post("/v2/models/narrow/infer", json=infer)
    assert answered.status_code == 422, answered.text
    assert answered.json()["error"].startswith("inputs[1]: model 'narrow' cannot answer this row")
    assert oip.status_code == 422, oip.text


def test_a_client_that_leaves_mid_body_is_counted_499_without_a_traceback(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), _connect(server) as connection:
        connection.sendall(
            b"POST /v1/models/alpha/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"
        )
        time.sleep(0.1)
    deadline = time.monotonic() + SOCKET_TIMEOUT_SECONDS
    counted = 'covserve_requests_total{code="499",model="alpha"'
    while counted not in (text := httpx.get(f"{server}/metrics").text):
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.05)
    assert 'code="500"' not in text
    assert not [record for record in caplog.records if record.exc_info]


def test_admission_bounds_requests_and_reserved_body_bytes() -> None:
    admission = Admission(requests=2, buffered_bytes=1000)
    admission.admit(600)
    with pytest.raises(OverloadedError, match="bodies of 600 bytes already held, this one's 500"):
        admission.admit(500)
    admission.admit(400)
    with pytest.raises(OverloadedError, match="2 requests already in flight") as refused:
        admission.admit(0)
    assert refused.value.retry_after_seconds == 1
    admission.release(600)
    admission.admit(500)


def test_a_chunked_upload_beyond_the_body_budget_is_a_503_before_it_is_read(served_repository: Path) -> None:
    settings = Settings(repository=served_repository, threads=1, max_rows=MAX_ROWS, max_buffered_bytes=1024)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the model's limit is reserved
        yield b'{"inputs": [[1, 2, 3]]}'

    with in_process_client(settings) as client:
        answered = client.post("/v1/models/alpha/predict", content=chunked())
    assert answered.status_code == 503
    assert answered.headers["retry-after"] == "1"
    assert "would pass --max-buffered-bytes 1024" in answered.json()["error"]


def test_the_repository_api_needs_an_admin_key_and_inference_keys_do_not_open_it(
    served_repository: Path,
) -> None:
    settings = Settings(repository=served_repository, threads=1, api_keys=["serve"], admin_keys=["admin"])
    serve, admin = {"Authorization": "Bearer serve"}, {"Authorization": "Bearer admin"}
    with in_process_client(settings) as client:
        assert client.post("/v2/repository/index", headers=serve).status_code == 401
        assert client.post("/v2/repository/index", headers=admin).status_code == 200
        assert client.post("/v2/repository/models/alpha/unload", headers=serve).status_code == 401
        assert client.get("/v1/models", headers=admin).status_code == 401
        assert client.get("/v1/models", headers=serve).status_code == 200


@pytest.mark.parametrize(
    "options",
    [{"api_keys": ["serve"]}, {"host": "0.0.0.0"}],
)
def test_without_admin_keys_the_repository_api_is_off_unless_local_and_keyless(
    served_repository: Path, options: dict[str, object]
) -> None:
    settings = Settings(repository=served_repository, threads=1, **options)  # type: ignore[arg-type]
    with in_process_client(settings) as client:
        answered = client.post(
            "/v2/repository/models/alpha/unload", headers={"Authorization": "Bearer serve"}
        )
    assert answered.status_code == 403
    assert "start covserve-serve with --admin-keys" in answered.json()["error"]


def test_a_served_version_corrupted_on_disk_keeps_serving_until_it_is_valid_again(
    served_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(served_repository / "beta", repository / "beta")
    onnx = repository / "beta" / "2" / "model.onnx"
    intact = onnx.read_bytes()
    with in_process_client(Settings(repository=repository, threads=1)) as client:
        onnx.write_bytes(intact[: len(intact) // 2])
        for _ in range(3):
            assert client.post("/v2/repository/models/beta/load").status_code == 200
        answered = client.post("/v1/models/beta/predict", json={"inputs": [[1, 2]]})
        listing = client.get("/v1/models").json()
        ready = client.get("/v2/health/ready").status_code
        onnx.write_bytes(intact)
        assert client.post("/v2/repository/models/beta/load").status_code == 200
        repaired = client.get("/v1/models").json()
    assert answered.status_code == 200
    assert answered.json()["version"] == 2
    assert [entry["path"] for entry in listing["skipped"]] == [str(onnx.parent)]
    assert ready == 200
    assert repaired["skipped"] == []

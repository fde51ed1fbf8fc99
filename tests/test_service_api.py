"""The native HTTP API against a real uvicorn server on 127.0.0.1 over a real two-model repository."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from covserve import gaussian
from covserve.service import Settings
from covserve.service._requests import ConditionRequest, PredictRequest
from covserve.service.cli import _freeze_startup_objects
from tests.service_fixtures import in_process_client

SERVE = str(Path(sys.executable).parent / "covserve-serve")


@pytest.fixture(scope="module")
def repository(served_repository: Path) -> Path:
    return served_repository


@pytest.fixture(scope="module")
def server(serve: Callable[..., str]) -> str:
    return serve(max_rows=50, max_body_bytes=20_000)


def _onnx(repository: Path, name: str, version: int, inputs: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / name / str(version) / "model.onnx"))
    names = [output.name for output in session.get_outputs()]
    values = session.run(None, {"x": inputs.astype(np.float32)})
    return dict(zip(names, values, strict=True))


def test_health_and_model_listing(server: str) -> None:
    assert httpx.get(f"{server}/v2/health/live").status_code == 200
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200
    listing = httpx.get(f"{server}/v1/models").json()
    served = {(model["name"], model["version"]) for model in listing["models"]}
    assert served == {("alpha", 1), ("beta", 1), ("beta", 2)}
    beta = next(model for model in listing["models"] if model["name"] == "beta")
    assert beta["targets"] == ["y0", "y1", "y2"]
    assert beta["provider"] == "CPUExecutionProvider"


def test_predict_equals_the_onnx_outputs_and_is_spd(server: str, repository: Path) -> None:
    inputs = np.random.default_rng(3).normal(size=(7, 3)) * 2
    response = httpx.post(f"{server}/v1/models/alpha/predict", json={"inputs": inputs.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["targets"]) == ("alpha", 1, ["y0", "y1"])
    reference = _onnx(repository, "alpha", 1, inputs)
    mean, covariance = np.asarray(body["outputs"]["mean"]), np.asarray(body["outputs"]["covariance"])
    np.testing.assert_allclose(mean, reference["mean"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(covariance, reference["covariance"], rtol=1e-5, atol=1e-6)
    assert gaussian.is_symmetric_positive_definite(covariance).all()
    assert np.array_equal(covariance, covariance.transpose(0, 2, 1))


def test_every_output_and_instances_by_feature_name(server: str, repository: Path) -> None:
    inputs = np.array([[0.5, -1.0], [2.0, 3.0]])
    outputs = ["mean", "covariance", "std", "correlation", "scale", "interval", "mahalanobis_ood"]
    instances = [{"x0": float(row[0]), "x1": float(row[1])} for row in inputs]
    body = httpx.post(
        f"{server}/v1/models/beta/versions/1/predict",
        json={"instances": instances, "outputs": outputs, "level": 0.8},
    ).json()["outputs"]
    reference = _onnx(repository, "beta", 1, inputs)
    covariance = np.asarray(body["covariance"])
    np.testing.assert_allclose(
        np.asarray(body["std"]) ** 2, np.diagonal(covariance, axis1=1, axis2=2), rtol=1e-9
    )
    np.testing.assert_allclose(body["correlation"], gaussian.correlation(covariance), rtol=1e-9)
    scale = np.asarray(body["scale"])
    np.testing.assert_allclose(scale @ scale.transpose(0, 2, 1), covariance, rtol=1e-4, atol=1e-6)
    lower, upper = gaussian.marginal_intervals(np.asarray(body["mean"]), covariance, 0.8)
    np.testing.assert_allclose(body["interval"]["lower"], lower, rtol=1e-9)
    np.testing.assert_allclose(body["interval"]["upper"], upper, rtol=1e-9)
    metadata = json.loads((repository / "beta" / "1" / "model.json").read_text())
    centred = inputs - np.asarray(metadata["training_inputs"]["mean"])
    precision = np.linalg.inv(np.asarray(metadata["training_inputs"]["covariance"]))
    expected = np.sqrt(np.einsum("bi,ij,bj->b", centred, precision, centred))
    np.testing.assert_allclose(body["mahalanobis_ood"], expected, rtol=1e-6)
    np.testing.assert_allclose(body["mean"], reference["mean"], rtol=1e-6, atol=1e-6)


def test_latest_version_is_the_default(server: str, repository: Path) -> None:
    inputs = np.array([[1.0, 1.0]])
    latest = httpx.post(f"{server}/v1/models/beta/predict", json={"inputs": inputs.tolist()}).json()
    assert latest["version"] == 2
    np.testing.assert_allclose(
        latest["outputs"]["mean"], _onnx(repository, "beta", 2, inputs)["mean"], rtol=1e-6
    )


def test_condition_equals_gaussian_conditioning_of_the_onnx_outputs(server: str, repository: Path) -> None:
    inputs = np.array([[0.0, 1.0], [2.0, -1.0]])
    observed = [{"y1": 0.5}, {"y0": -1.0, "y2": 2.0}]
    response = httpx.post(
        f"{server}/v1/models/beta/condition", json={"inputs": inputs.tolist(), "observed": observed}
    )
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    reference = _onnx(repository, "beta", 2, inputs)
    for index, (indices, values) in enumerate([([1], [0.5]), ([0, 2], [-1.0, 2.0])]):
        mean, covariance = gaussian.condition(
            reference["mean"][index : index + 1].astype(np.float64),
            reference["covariance"][index : index + 1].astype(np.float64),
            indices,
            np.asarray([values]),
        )
        np.testing.assert_allclose(rows[index]["mean"], mean[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rows[index]["covariance"], covariance[0], rtol=1e-4, atol=1e-5)
        assert gaussian.is_symmetric_positive_definite(np.asarray([rows[index]["covariance"]])).all()
    assert rows[0]["targets"] == ["y0", "y2"]
    assert rows[1]["targets"] == ["y1"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/gamma/predict", {"inputs": [[1, 2, 3]]}, 404, "gamma"),
        ("/v1/models/beta/versions/9/predict", {"inputs": [[1, 2]]}, 404, "version 9"),
        ("/v1/models/beta/versions/two/predict", {"inputs": [[1, 2]]}, 400, "positive integer, got 'two'"),
        ("/v1/models/beta/versions/²/predict", {"inputs": [[1, 2]]}, 400, "positive integer, got '²'"),
        ("/v1/models/alpha/predict", {"inputs": [[1, 2]]}, 400, "expected rows of 3 features"),
        ("/v1/models/alpha/predict", {"inputs": []}, 400, "at least one row"),
        ("/v1/models/alpha/predict", {"inputs": [[1, 2, 3]] * 51}, 413, "at most 50 rows"),
        ("/v1/models/alpha/predict", {"inputs": [[1, 2, 3]], "outputs": ["median"]}, 400, "outputs"),
        ("/v1/models/alpha/predict", {"inputs": [[1, 2, 3]], "level": 1.5}, 400, "level"),
        ("/v1/models/alpha/predict", {"inputs": [[1, "a", 3]]}, 400, "inputs"),
        ("/v1/models/alpha/predict", {"rows": [[1, 2, 3]]}, 400, "rows"),
        ("/v1/models/alpha/predict", {"instances": [{"x0": 1}]}, 400, "missing ['x1', 'x2']"),
        ("/v1/models/alpha/predict", {"inputs": [[1e400, 2, 3]]}, 400, "infinity"),
        ("/v1/models/beta/condition", {"inputs": [[1, 2]], "observed": [{"y9": 1}]}, 400, "observed[0]"),
        ("/v1/models/beta/condition", {"inputs": [[1, 2]], "observed": []}, 400, "one mapping per input row"),
        ("/v1/nothing", {}, 404, "route not found"),
    ],
)
def test_bad_requests_get_their_status_and_a_json_error(
    server: str, path: str, body: object, status: int, message: str
) -> None:
    response = httpx.post(f"{server}{path}", content=json.dumps(body).replace("Infinity", "1e400"))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_malformed_json_and_oversized_bodies(server: str) -> None:
    broken = httpx.post(f"{server}/v1/models/alpha/predict", content=b"{inputs: [")
    assert broken.status_code == 400
    assert "invalid JSON" in broken.json()["error"]
    huge = httpx.post(f"{server}/v1/models/alpha/predict", content=b" " * 30_000)
    assert huge.status_code == 413
    assert "at most 20000 bytes" in huge.json()["error"]


def test_metrics_count_requests_and_monitor_uncertainty(server: str) -> None:
    httpx.post(f"{server}/v1/models/alpha/predict", json={"inputs": [[0.0, 0.0, 0.0]]})
    text = httpx.get(f"{server}/metrics").text
    assert (
        'covserve_requests_total{code="200",model="alpha",route="/v1/models/{name}/predict",version=""}'
        in text
    )
    assert 'covserve_model_info{model="beta",provider="CPUExecutionProvider",version="2"} 1.0' in text
    for family in ("request_duration_seconds", "queue_duration_seconds", "inference_duration_seconds"):
        assert f"covserve_{family}_bucket" in text
    assert 'covserve_predicted_log_det_count{model="alpha"}' in text
    assert 'covserve_input_mahalanobis_count{model="alpha"}' in text


def test_request_labels_name_served_models_only(repository: Path) -> None:
    """Paths naming unknown models or versions are counted under "", so clients cannot grow the series."""
    versions = "/v1/models/{name}/versions/{version}/predict"
    with in_process_client(Settings(repository=repository, threads=1)) as client:
        for path, status in (
            ("/v1/models/ghost-1/predict", 404),
            ("/v1/models/ghost-2/predict", 404),
            ("/v1/models/beta/versions/7/predict", 404),
            ("/v1/models/beta/versions/2/predict", 200),
        ):
            assert client.post(path, json={"inputs": [[0, 0]]}).status_code == status
        assert client.get("/v1/models/beta/predict").status_code == 405
        text = client.get("/metrics").text
    assert "ghost" not in text
    assert 'version="7"' not in text
    latest = "/v1/models/{name}/predict"
    assert f'covserve_requests_total{{code="404",model="",route="{latest}",version=""}} 2.0' in text
    assert f'covserve_requests_total{{code="404",model="beta",route="{versions}",version=""}} 1.0' in text
    assert f'covserve_requests_total{{code="200",model="beta",route="{versions}",version="2"}} 1.0' in text


def test_access_log_can_be_switched_off(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(repository=repository, access_log=False, threads=1)
    with caplog.at_level(logging.INFO, logger="covserve.access"), in_process_client(settings) as client:
        answered = client.post("/v1/models/alpha/predict", json={"inputs": [[0, 0, 0]]})
        assert answered.status_code == 200
        assert len(answered.headers["x-request-id"]) == 32
    assert [record for record in caplog.records if record.name == "covserve.access"] == []


def test_auth_protects_inference_but_not_health(repository: Path) -> None:
    settings = Settings(repository=repository, api_keys=["s3cret", "other"], threads=1)
    with in_process_client(settings) as client:
        assert client.get("/v2/health/ready").status_code == 200
        denied = client.post("/v1/models/alpha/predict", json={"inputs": [[0, 0, 0]]})
        assert denied.status_code == 401
        assert "authorization" in denied.json()["error"]
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = client.get("/v1/models", headers={"Authorization": "Bearer other"})
        assert allowed.status_code == 200
        assert client.get("/metrics").status_code == 200


def test_key_file_protected_metrics_request_id_and_no_key_in_the_log(
    repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# rotated 2026-11\n  file-key  \n\n", encoding="utf-8")
    settings = Settings(repository=repository, api_key_file=keys, protect_metrics=True, threads=1)
    key = {"Authorization": "Bearer file-key"}
    with caplog.at_level(logging.INFO, logger="covserve.access"), in_process_client(settings) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=key).status_code == 200
        assert client.get("/v2/health/live").status_code == 200
        answered = client.post(
            "/v1/models/alpha/predict",
            json={"inputs": [[0, 0, 0]]},
            headers={**key, "x-request-id": "trace-42"},
        )
        assert answered.status_code == 200
        assert answered.headers["x-request-id"] == "trace-42"
        fresh = client.get("/v1/models", headers=key).headers["x-request-id"]
        assert len(fresh) == 32
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "covserve.access"]
    traced = [line for line in lines if line["request_id"] == "trace-42"]
    assert traced == [
        {
            "request_id": "trace-42",
            "method": "POST",
            "path": "/v1/models/alpha/predict",
            "model": "alpha",
            "version": "",
            "status": 200,
            "seconds": traced[0]["seconds"],
        }
    ]
    assert "file-key" not in caplog.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "abc"], "--port"),
        (["--max-rows", "0"], "--max-rows"),
        (["--device", "gpu"], "--device"),
        (["--max-queue-delay-ms", "-1"], "--max-queue-delay-ms"),
        (["--api-key-file", "/nonexistent/keys.txt"], "/nonexistent/keys.txt"),
    ],
)
def test_serve_cli_rejects_bad_flags_in_one_line(flags: list[str], message: str) -> None:
    result = subprocess.run([SERVE, *flags], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_serve_cli_explains_a_missing_cuda_provider(repository: Path) -> None:
    result = subprocess.run(
        [SERVE, "--device", "cuda", "--repository", str(repository)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "covserve[gpu]" in result.stderr


def _references(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []


def test_serve_cli_takes_start_up_objects_out_of_garbage_collection() -> None:
    """What is alive before serving starts leaves the collector's generations: no collection walks it."""
    gc.collect()
    oldest = len(gc.get_objects(generation=2))
    try:
        _freeze_startup_objects()
        assert oldest > 10_000
        assert gc.get_freeze_count() > 0.9 * oldest
        assert len(gc.get_objects(generation=2)) < oldest / 100
    finally:
        gc.unfreeze()


def test_openapi_documents_the_bodies_with_valid_examples(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json").json()
    schemas = document["components"]["schemas"]
    for ref in _references(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    routes: list[tuple[str, type[PredictRequest] | type[ConditionRequest]]] = [
        ("/v1/models/{name}/predict", PredictRequest),
        ("/v1/models/{name}/versions/{version}/predict", PredictRequest),
        ("/v1/models/{name}/condition", ConditionRequest),
    ]
    for path, model in routes:
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
        assert body["examples"]
        for example in body["examples"].values():
            model.model_validate(example["value"])
        assert "413" in document["paths"][path]["post"]["responses"]
    assert httpx.get(f"{server}/docs").status_code == 200


def test_inputs_may_name_their_columns_and_a_wrong_order_is_refused(server: str) -> None:
    rows = [[0.5, -1.0], [2.0, 3.0]]
    named = httpx.post(f"{server}/v1/models/beta/predict", json={"inputs": rows, "columns": ["x0", "x1"]})
    plain = httpx.post(f"{server}/v1/models/beta/predict", json={"inputs": rows})
    assert named.status_code == 200, named.text
    assert named.json()["outputs"] == plain.json()["outputs"]
    swapped = httpx.post(f"{server}/v1/models/beta/predict", json={"inputs": rows, "columns": ["x1", "x0"]})
    assert swapped.status_code == 400
    assert swapped.json() == {
        "error": "columns: the model's inputs are ['x0', 'x1'] in this order, got ['x1', 'x0']"
    }
    instances = httpx.post(
        f"{server}/v1/models/beta/predict", json={"instances": [{"x0": 1, "x1": 2}], "columns": ["x0", "x1"]}
    )
    assert instances.status_code == 400
    assert "'instances' rows name their own" in instances.json()["error"]


def test_an_empty_repository_is_not_ready_and_says_why(tmp_path: Path) -> None:
    with in_process_client(Settings(repository=tmp_path, threads=1)) as client:
        assert client.get("/v2/health/live").status_code == 200
        answered = client.get("/v2/health/ready")
    assert answered.status_code == 503
    reason = f"the model repository {tmp_path} holds no model versions (models/<name>/<version>/)"
    assert answered.json() == {"error": f"not ready: {reason}"}


def test_a_model_with_no_loadable_version_makes_the_server_not_ready(
    served_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(served_repository / "alpha", repository / "alpha")
    (repository / "gamma" / "1").mkdir(parents=True)
    (repository / "gamma" / "1" / "model.json").write_text("{", encoding="utf-8")
    with in_process_client(Settings(repository=repository, threads=1)) as client:
        answered = client.get("/v2/health/ready")
        assert client.post("/v1/models/alpha/predict", json={"inputs": [[0, 0, 0]]}).status_code == 200
    assert answered.status_code == 503
    reason = answered.json()["error"]
    assert reason.startswith("not ready: not every model in the repository loaded: ")
    assert "gamma" in reason


def test_a_missing_repository_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    result = subprocess.run(
        [SERVE, "--repository", str(missing), "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"covserve-serve: error: --repository {missing}: no such directory "
        "(train a model into it first, e.g. covserve-train fit --config configs/demo.yaml)"
    ]


def test_serve_help_shows_every_default_and_api_keys_is_a_flag() -> None:
    result = subprocess.run([SERVE, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    assert "--api-keys API_KEYS" in flat
    assert "--access-log, --no-access-log" in flat
    assert "(default 8000)" in flat
    assert "(default on)" in flat

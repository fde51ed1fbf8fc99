"""The service's model repository scan and ONNX Runtime sessions, on real exported models in tmp dirs."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray

from covserve.repository import METADATA_FILE, MODEL_FILE
from covserve.service._repository import (
    InvalidVersionError,
    ModelVersion,
    RepositoryScan,
    read_version,
    scan_repository,
)
from covserve.service._runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    Device,
    DeviceUnavailableError,
    InvalidModelError,
    LoadedModel,
    available_cpus,
    load_model,
)
from covserve.training.export import ModelCard, export_model
from covserve.training.networks import CovarianceModel, Standardisation
from tests.random_models import random_model

IN_DIM = 3
OUT_DIM = 2
WIDTH = 8
"""Hidden width of the test networks (tiny: exports and sessions stay fast)."""

DEMO = "demo"
OTHER = "other"
KINDS = {DEMO: "cholesky", OTHER: "diagonal"}
"""The two exported models, by name, and their covariance parameterisations."""

THREADS = 1
"""ONNX Runtime intra-op threads for the sessions under test."""

TORCH_RTOL = 1e-4
"""Largest ``max |service − torch| / max |torch|`` per output (the exporter's parity tolerance)."""

ORT_RTOL = 1e-6
"""Float64 outputs of :meth:`LoadedModel.run` against a plain float32 InferenceSession run."""

PRECISION_ATOL = 1e-8
"""``training_precision @ training covariance`` against the identity."""

CONCURRENT_CALLS = 64
"""Runs spread over :data:`CONCURRENT_WORKERS` threads sharing one session."""

CONCURRENT_WORKERS = 8

Array = NDArray[np.float64]


def _train_inputs(rows: int = 200, seed: int = 1) -> Array:
    """Raw inputs ``(rows, IN_DIM)`` far from standardised, with correlated columns."""
    generator = np.random.default_rng(seed)
    base = generator.normal(size=(rows, IN_DIM))
    base[:, 2] += 0.5 * base[:, 0]
    inputs: Array = base * [1.0, 10.0, 0.1] + [5.0, -3.0, 0.0]
    return inputs


TRAIN_INPUTS = _train_inputs()


def _build_model(kind: str, seed: int) -> CovarianceModel:
    """A tiny model with random weights and BatchNorm statistics moved off (0, 1)."""
    torch.manual_seed(seed)
    targets = np.stack([np.sin(TRAIN_INPUTS[:, 0]), TRAIN_INPUTS[:, 1] * 3.0], axis=1)
    model = random_model(
        IN_DIM, OUT_DIM, kind, Standardisation.fit(TRAIN_INPUTS, targets), width=WIDTH, depth=1
    )
    with torch.no_grad():
        for _ in range(3):
            model(torch.as_tensor(TRAIN_INPUTS[:32], dtype=torch.float32))
    return model


def _card(name: str) -> ModelCard:
    return ModelCard(
        name=name,
        method="w2-bound",
        input_names=("a", "b", "c"),
        target_names=("y0", "y1"),
        data_description="synthetic service-runtime test data",
        split_sizes={"train": 200, "validation": 50, "test": 50},
        test_metrics={"nll": 1.5},
        training_input_mean=TRAIN_INPUTS.mean(axis=0),
        training_input_covariance=np.cov(TRAIN_INPUTS, rowvar=False),
    )


@dataclass(frozen=True)
class Exported:
    """A read-only template repository holding ``demo/1`` and ``other/1``, and their torch models."""

    template: Path
    models: dict[str, CovarianceModel]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    template = tmp_path_factory.mktemp("template")
    models: dict[str, CovarianceModel] = {}
    for seed, (name, kind) in enumerate(KINDS.items()):
        models[name] = _build_model(kind, seed)
        export_model(models[name], _card(name), template, TRAIN_INPUTS[:16])
    return Exported(template, models)


@pytest.fixture
def repository(exported: Exported, tmp_path: Path) -> Path:
    """A fresh, writable copy of the template repository."""
    root = tmp_path / "models"
    shutil.copytree(exported.template, root)
    return root


@pytest.fixture(scope="module")
def demo(exported: Exported) -> LoadedModel:
    """``demo/1`` loaded on the CPU straight from the template (never modified)."""
    return load_model(read_version(exported.template / DEMO / "1"), Device.CPU, THREADS)


# ------------------------------------------------------------------------------------------------ helpers


def _metadata(version_dir: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((version_dir / METADATA_FILE).read_text(encoding="utf-8"))
    return metadata


def _write_metadata(version_dir: Path, metadata: Any) -> None:
    (version_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")


def _add_version(repository: Path, name: str, version: int, source: str = "1") -> Path:
    """Copy ``<name>/<source>`` to ``<name>/<version>`` with ``model.json``'s version fixed up."""
    target = repository / name / str(version)
    shutil.copytree(repository / name / source, target)
    _write_metadata(target, {**_metadata(target), "version": version})
    return target


def _set_onnx(version_dir: Path, data: bytes) -> None:
    """Replace ``model.onnx`` and record its sha256, keeping the version valid on disk."""
    (version_dir / MODEL_FILE).write_bytes(data)
    _write_metadata(version_dir, {**_metadata(version_dir), "onnx_sha256": hashlib.sha256(data).hexdigest()})


def _found(repository: Path) -> list[tuple[str, int]]:
    return [(version.name, version.version) for version in scan_repository(repository).versions]


def _relative_error(got: Array, want: Array) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _random_inputs(rows: int, seed: int, spread: float = 1.0) -> Array:
    """Rows drawn around the training distribution, ``spread`` training standard deviations wide."""
    generator = np.random.default_rng(seed)
    std = TRAIN_INPUTS.std(axis=0)
    inputs: Array = TRAIN_INPUTS.mean(axis=0) + spread * std * generator.normal(size=(rows, IN_DIM))
    return inputs


# ---------------------------------------------------------------------------------------------- scanning


def test_scan_finds_both_models_and_every_version(repository: Path) -> None:
    _add_version(repository, DEMO, 2)
    _add_version(repository, DEMO, 10)
    scan = scan_repository(repository)
    assert scan.problems == ()
    assert [(v.name, v.version) for v in scan.versions] == [(DEMO, 1), (DEMO, 2), (DEMO, 10), (OTHER, 1)]
    version = scan.versions[0]
    assert version.path == repository / DEMO / "1"
    assert version.input_names == ("a", "b", "c")
    assert version.target_names == ("y0", "y1")
    assert (version.in_dim, version.out_dim) == (IN_DIM, OUT_DIM)
    assert version.metadata.parameterisation == KINDS[DEMO]
    assert version.model_path == version.path / MODEL_FILE
    np.testing.assert_allclose(version.training_mean, TRAIN_INPUTS.mean(axis=0), rtol=1e-12)


def test_scan_ignores_temporaries_hidden_and_non_numeric_names(repository: Path) -> None:
    crashed = repository / DEMO / ".tmp-x"
    shutil.copytree(repository / DEMO / "1", crashed)  # even a complete one is never read
    (repository / DEMO / "latest").mkdir()
    (repository / DEMO / "v2").mkdir()
    (repository / DEMO / "-3").mkdir()
    (repository / ".cache" / "1").mkdir(parents=True)
    (repository / "README.md").write_text("not a model\n", encoding="utf-8")
    scan = scan_repository(repository)
    assert scan.problems == ()
    assert [(v.name, v.version) for v in scan.versions] == [(DEMO, 1), (OTHER, 1)]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_an_unusable_root_is_a_problem_not_an_exception(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "models"
    if kind == "file":
        root.write_text("", encoding="utf-8")
    scan = scan_repository(root)
    assert scan.versions == ()
    assert len(scan.problems) == 1
    assert scan.problems[0].path == root
    assert str(root) in scan.problems[0].reason
    assert ("does not exist" if kind == "missing" else "not a directory") in scan.problems[0].reason


def test_an_empty_root_has_no_versions_and_no_problems(tmp_path: Path) -> None:
    assert scan_repository(tmp_path) == RepositoryScan(versions=(), problems=())


Mutation = Callable[[Path], None]


def _edit(change: Callable[[dict[str, Any]], object]) -> Mutation:
    """A mutation applying ``change`` to the parsed ``model.json`` and writing it back."""

    def mutate(version_dir: Path) -> None:
        metadata = _metadata(version_dir)
        change(metadata)
        _write_metadata(version_dir, metadata)

    return mutate


def _unlink(file_name: str) -> Mutation:
    return lambda version_dir: (version_dir / file_name).unlink()


def _write(file_name: str, text: str) -> Mutation:
    def mutate(version_dir: Path) -> None:
        (version_dir / file_name).write_text(text, encoding="utf-8")

    return mutate


def _append_byte(version_dir: Path) -> None:
    with (version_dir / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")


def _training(key: str, value: object) -> Mutation:
    return _edit(lambda metadata: metadata["training_inputs"].__setitem__(key, value))


ASYMMETRIC = [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
NEGATIVE_DEFINITE = [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

INVALID_CASES: dict[str, tuple[Mutation, str, str]] = {
    # case: (mutation of demo/2, file named in the reason, words of the reason)
    "missing-model.json": (_unlink(METADATA_FILE), METADATA_FILE, "missing"),
    "missing-model.onnx": (_unlink(MODEL_FILE), MODEL_FILE, "missing"),
    "invalid-json": (_write(METADATA_FILE, "{not json"), METADATA_FILE, "not valid JSON"),
    "json-array": (_write(METADATA_FILE, "[1, 2]"), METADATA_FILE, "expected a JSON object, got a JSON list"),
    "missing-key": (_edit(lambda m: m.pop("in_dim")), METADATA_FILE, "required key 'in_dim' is missing"),
    "missing-statistic": (
        _edit(lambda m: m["training_inputs"].pop("covariance")),
        METADATA_FILE,
        "'training_inputs'['covariance'] is missing",
    ),
    "string-dim": (
        _edit(lambda m: m.update(in_dim="3")),
        METADATA_FILE,
        "'in_dim': Input should be a valid integer, got \"3\"",
    ),
    "bool-version": (
        _edit(lambda m: m.update(version=True)),
        METADATA_FILE,
        "'version': Input should be a valid integer, got true",
    ),
    "zero-dim": (
        _edit(lambda m: m.update(out_dim=0)),
        METADATA_FILE,
        "'out_dim': Input should be greater than or equal to 1, got 0",
    ),
    "string-names": (
        _edit(lambda m: m.update(input_names="abc")),
        METADATA_FILE,
        "'input_names': Input should be a valid array, got \"abc\"",
    ),
    "duplicate-names": (
        _edit(lambda m: m.update(input_names=["a", "b", "a"])),
        METADATA_FILE,
        "'input_names': repeats the names ['a']",
    ),
    "null-name": (
        _edit(lambda m: m.update(name=None)),
        METADATA_FILE,
        "'name': Input should be a valid string, got null",
    ),
    "bad-sha-format": (
        _edit(lambda m: m.update(onnx_sha256="abc")),
        METADATA_FILE,
        "64 lower-case hex digits",
    ),
    "sha-mismatch": (_append_byte, MODEL_FILE, "sha256"),
    "input-names-vs-in-dim": (
        _edit(lambda m: m.update(input_names=["a", "b"])),
        METADATA_FILE,
        "'input_names' has 2 names but 'in_dim' is 3",
    ),
    "target-names-vs-out-dim": (
        _edit(lambda m: m.update(target_names=["y0", "y1", "y2"])),
        METADATA_FILE,
        "'target_names' has 3 names but 'out_dim' is 2",
    ),
    "outputs-vs-out-dim": (
        _edit(lambda m: m["outputs"].update(covariance=[-1, 2, 3])),
        METADATA_FILE,
        "'outputs'['covariance'] is [-1, 2, 3], expected [-1, 2, 2]",
    ),
    "training-mean-shape": (
        _training("mean", [0.0, 1.0]),
        METADATA_FILE,
        "'training_inputs'['mean'] has shape (2,), expected (3,)",
    ),
    "training-covariance-shape": (
        _training("covariance", [[1.0, 0.0], [0.0, 1.0]]),
        METADATA_FILE,
        "'training_inputs'['covariance'] has shape (2, 2), expected (3, 3)",
    ),
    "training-covariance-ragged": (
        _training("covariance", [[1.0, 0.0, 0.0], [0.0, 1.0], [0.0]]),
        METADATA_FILE,
        "'training_inputs'['covariance'] must be a numeric array",
    ),
    "training-covariance-asymmetric": (
        _training("covariance", ASYMMETRIC),
        METADATA_FILE,
        "'training_inputs'['covariance'] is not symmetric",
    ),
    "training-covariance-negative": (
        _training("covariance", NEGATIVE_DEFINITE),
        METADATA_FILE,
        "'training_inputs'['covariance'] is not positive semi-definite",
    ),
    "metric-not-a-number": (
        _edit(lambda m: m["test_metrics"].update(nll="low")),
        METADATA_FILE,
        "'test_metrics'['nll']: Input should be a valid number, got \"low\"",
    ),
    "version-vs-folder": (
        _edit(lambda m: m.update(version=7)),
        "2",
        "the directory name '2' differs from 'version' 7",
    ),
    "name-vs-folder": (
        _edit(lambda m: m.update(name="renamed")),
        "2",
        "the model directory name 'demo' differs from 'name' 'renamed'",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_an_invalid_version_is_reported_and_skipped(repository: Path, case: str) -> None:
    mutate, file_name, reason = INVALID_CASES[case]
    broken = _add_version(repository, DEMO, 2)
    mutate(broken)
    scan = scan_repository(repository)
    assert [(v.name, v.version) for v in scan.versions] == [(DEMO, 1), (OTHER, 1)]
    assert len(scan.problems) == 1, scan.problems
    problem = scan.problems[0]
    assert problem.path == broken
    assert reason in problem.reason
    assert str(broken / file_name) in problem.reason or str(broken) + ":" in problem.reason
    with pytest.raises(InvalidVersionError) as raised:
        read_version(broken)
    assert raised.value.reason == problem.reason
    # The valid sibling still loads and runs.
    assert load_model(scan.versions[0], Device.CPU, THREADS).run(TRAIN_INPUTS[:2]).mean.shape == (2, OUT_DIM)


def test_folder_names_must_spell_the_version_exactly(repository: Path) -> None:
    shutil.copytree(repository / DEMO / "1", repository / DEMO / "01")  # its model.json says version 1
    (repository / OTHER / "2").write_text("a file, not a version directory", encoding="utf-8")
    scan = scan_repository(repository)
    assert [(v.name, v.version) for v in scan.versions] == [(DEMO, 1), (OTHER, 1)]
    reasons = {problem.path.relative_to(repository).as_posix(): problem.reason for problem in scan.problems}
    assert set(reasons) == {f"{DEMO}/01", f"{OTHER}/2"}
    assert "the directory name '01' differs from 'version' 1" in reasons[f"{DEMO}/01"]
    assert "not a directory" in reasons[f"{OTHER}/2"]


def test_training_precision_inverts_the_training_covariance(exported: Exported) -> None:
    version = read_version(exported.template / DEMO / "1")
    covariance = version.metadata.training_inputs.covariance_array()
    np.testing.assert_allclose(covariance, np.cov(TRAIN_INPUTS, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(version.training_precision @ covariance, np.eye(IN_DIM), atol=PRECISION_ATOL)
    np.testing.assert_array_equal(version.training_precision, version.training_precision.T)
    assert version.training_precision.shape == (IN_DIM, IN_DIM)
    assert version.training_mean.shape == (IN_DIM,)


def test_singular_training_covariance_gets_a_ridge(repository: Path) -> None:
    factor = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, -1.0]])  # rank 2 of 3: a linearly dependent input
    singular = factor @ factor.T
    _training("covariance", singular.tolist())(repository / DEMO / "1")
    version = read_version(repository / DEMO / "1")
    precision = version.training_precision
    assert np.all(np.isfinite(precision))
    np.testing.assert_array_equal(precision, precision.T)
    assert np.all(np.linalg.eigvalsh(precision) > 0.0)
    # Inside the span of the training inputs the ridge barely matters: the pseudo-inverse's distances.
    inside = factor @ np.array([0.3, -0.7])
    pseudo = float(inside @ np.linalg.pinv(singular) @ inside)
    assert float(inside @ precision @ inside) == pytest.approx(pseudo, rel=1e-6)
    # Off the span (a direction the training inputs never moved in) the distance is enormous.
    null = np.cross(factor[:, 0], factor[:, 1])
    assert float(null @ precision @ null) > 1e6 * float(null @ null) / np.linalg.eigvalsh(singular)[-1]


def test_zero_training_covariance_gets_the_unit_ridge(repository: Path) -> None:
    _training("covariance", np.zeros((IN_DIM, IN_DIM)).tolist())(repository / DEMO / "1")
    np.testing.assert_array_equal(read_version(repository / DEMO / "1").training_precision, np.eye(IN_DIM))


# ------------------------------------------------------------------------------------------------ runtime


def test_run_matches_onnxruntime_and_torch(exported: Exported, demo: LoadedModel) -> None:
    inputs = _random_inputs(33, seed=5)
    prediction = demo.run(inputs)
    session = ort.InferenceSession(str(demo.version.model_path), providers=[CPU_PROVIDER])
    direct = session.run(None, {"x": inputs.astype(np.float32)})
    reference = copy.deepcopy(exported.models[DEMO]).float().eval()
    with torch.no_grad():
        expected = [
            tensor.double().numpy() for tensor in reference(torch.as_tensor(inputs, dtype=torch.float32))
        ]
    for name, want_ort, want_torch in zip(("mean", "covariance", "scale"), direct, expected, strict=True):
        got: Array = getattr(prediction, name)
        assert got.dtype == np.float64
        assert got.shape == want_ort.shape
        assert _relative_error(got, np.asarray(want_ort, dtype=np.float64)) <= ORT_RTOL, name
        assert _relative_error(got, want_torch) <= TORCH_RTOL, name


def test_float32_and_float64_inputs_agree(demo: LoadedModel) -> None:
    inputs = _random_inputs(4, seed=6)
    as64 = demo.run(inputs)
    as32 = demo.run(inputs.astype(np.float32))
    np.testing.assert_array_equal(as64.mean, as32.mean)
    np.testing.assert_array_equal(as64.covariance, as32.covariance)


@pytest.mark.parametrize("spread", [0.1, 1.0, 5.0])
def test_covariances_are_symmetric_positive_definite(demo: LoadedModel, spread: float) -> None:
    prediction = demo.run(_random_inputs(256, seed=7, spread=spread))
    covariance = prediction.covariance
    np.testing.assert_array_equal(covariance, np.swapaxes(covariance, -1, -2))
    assert np.all(np.linalg.eigvalsh(covariance) > 0.0)
    np.testing.assert_allclose(
        prediction.scale @ np.swapaxes(prediction.scale, -1, -2),
        covariance,
        rtol=1e-4,
        atol=1e-4 * float(np.max(np.abs(covariance))),
    )


def test_batch_of_one_and_row_independence(demo: LoadedModel) -> None:
    inputs = _random_inputs(5, seed=8)
    batch = demo.run(inputs)
    single = demo.run(inputs[2:3])
    np.testing.assert_allclose(single.mean[0], batch.mean[2], rtol=1e-6)
    np.testing.assert_allclose(single.covariance[0], batch.covariance[2], rtol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.zeros((2, IN_DIM + 1)), "expected shape (B, 3)"),
        (np.zeros(IN_DIM), "expected shape (B, 3)"),
        (np.zeros((0, IN_DIM)), "expected shape (B, 3) with B >= 1"),
        (np.array([[0.0, np.nan, 0.0]]), "row 0 is not finite"),
        (np.array([[0.0, 0.0, 0.0], [1e39, 0.0, 0.0]]), "row 1 is not finite in float32"),
        (np.array([["a", "b", "c"]]), "expected a numeric array"),
    ],
)
def test_run_rejects_malformed_inputs(demo: LoadedModel, inputs: NDArray[Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"^inputs: ") as raised:
        demo.run(inputs)
    assert message in str(raised.value)


def test_concurrent_runs_share_one_session(demo: LoadedModel) -> None:
    batches = [_random_inputs(1 + index % 7, seed=100 + index) for index in range(CONCURRENT_CALLS)]
    serial = [demo.run(batch) for batch in batches]
    with ThreadPoolExecutor(CONCURRENT_WORKERS) as pool:
        parallel = list(pool.map(demo.run, batches))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one.mean, other.mean)
        np.testing.assert_array_equal(one.covariance, other.covariance)
        np.testing.assert_array_equal(one.scale, other.scale)


def test_warm_up_can_run_again_and_leaves_predictions_unchanged(demo: LoadedModel) -> None:
    inputs = _random_inputs(5, seed=7)
    before = demo.run(inputs)
    demo.warm_up()
    after = demo.run(inputs)
    np.testing.assert_array_equal(before.mean, after.mean)
    np.testing.assert_array_equal(before.covariance, after.covariance)


def test_warm_up_refuses_a_model_that_is_not_finite_at_its_training_mean(demo: LoadedModel) -> None:
    far = dataclasses.replace(demo.version, training_mean=np.full(IN_DIM, 3.0e38))
    with pytest.raises(InvalidModelError, match="is not finite at the training mean"):
        load_model(far, Device.CPU, THREADS)


# ------------------------------------------------------------------------------------------------ devices


@pytest.fixture
def version(exported: Exported) -> ModelVersion:
    return read_version(exported.template / DEMO / "1")


@pytest.mark.parametrize("device", [Device.AUTO, Device.CPU, "auto", "cpu"])
def test_auto_and_cpu_run_on_the_cpu_here(
    version: ModelVersion, device: Device, capfd: pytest.CaptureFixture[str]
) -> None:
    if device in (Device.AUTO, "auto") and CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has CUDA; auto may pick it")
    loaded = load_model(version, Device(device), THREADS)
    assert loaded.provider == CPU_PROVIDER
    assert loaded.version is version
    assert repr(loaded) == f"LoadedModel('demo', version=1, provider='{CPU_PROVIDER}')"
    assert capfd.readouterr() == ("", "")


def test_cuda_without_a_cuda_build_explains_the_fix(version: ModelVersion) -> None:
    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has CUDA")
    with pytest.raises(DeviceUnavailableError) as raised:
        load_model(version, Device.CUDA, THREADS)
    message = str(raised.value)
    for hint in (
        "--device cuda",
        CUDA_PROVIDER,
        "covserve[gpu]",
        "NVIDIA driver",
        "--device auto",
        "--device cpu",
    ):
        assert hint in message


@pytest.fixture
def cuda_advertised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the ONNX Runtime build has CUDA (the CPU build then quietly attaches only the CPU)."""
    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build really has CUDA")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])


@pytest.mark.usefixtures("cuda_advertised")
def test_cuda_that_does_not_attach_is_an_error(version: ModelVersion) -> None:
    with pytest.raises(DeviceUnavailableError, match="did not attach") as raised:
        load_model(version, Device.CUDA, THREADS)
    assert "covserve[gpu]" in str(raised.value)


@pytest.mark.usefixtures("cuda_advertised")
def test_auto_falls_back_quietly_when_cuda_does_not_attach(
    version: ModelVersion, capfd: pytest.CaptureFixture[str]
) -> None:
    assert load_model(version, Device.AUTO, THREADS).provider == CPU_PROVIDER
    assert capfd.readouterr() == ("", "")


@pytest.fixture
def cuda_session_fails(cuda_advertised: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA advertised, but creating a session that requests it raises (no usable GPU)."""
    real = ort.InferenceSession

    def create(model: Any, options: Any = None, providers: Any = None, **kwargs: Any) -> Any:
        names = [entry[0] if isinstance(entry, tuple) else entry for entry in providers or []]
        if CUDA_PROVIDER in names:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real(model, options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", create)


@pytest.mark.usefixtures("cuda_session_fails")
def test_cuda_session_failure_is_device_unavailable(version: ModelVersion) -> None:
    with pytest.raises(DeviceUnavailableError, match="no CUDA-capable device") as raised:
        load_model(version, Device.CUDA, THREADS)
    assert isinstance(raised.value.__cause__, RuntimeError)


@pytest.mark.usefixtures("cuda_session_fails")
def test_auto_falls_back_when_the_cuda_session_fails(version: ModelVersion) -> None:
    assert load_model(version, Device.AUTO, THREADS).provider == CPU_PROVIDER


@pytest.mark.parametrize("threads", [0, -1, True, 1.5])
def test_thread_count_must_be_a_positive_integer(version: ModelVersion, threads: Any) -> None:
    with pytest.raises(ValueError, match="intra_op_threads"):
        load_model(version, Device.CPU, threads)


def test_unknown_device_is_rejected(version: ModelVersion) -> None:
    with pytest.raises(ValueError, match="gpu"):
        load_model(version, "gpu", THREADS)  # type: ignore[arg-type]


def test_available_cpus() -> None:
    count = available_cpus()
    assert count >= 1
    if hasattr(os, "sched_getaffinity"):
        assert count == len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------------- invalid graphs


def _resize(version_dir: Path, in_dim: int | None = None, out_dim: int | None = None) -> None:
    """Rewrite ``model.json`` consistently for other dims, leaving ``model.onnx`` and its sha256 alone."""
    metadata = _metadata(version_dir)
    if in_dim is not None:
        metadata.update(in_dim=in_dim, input_names=[f"x{index}" for index in range(in_dim)])
        metadata["training_inputs"] = {"mean": [0.0] * in_dim, "covariance": np.eye(in_dim).tolist()}
    if out_dim is not None:
        metadata.update(out_dim=out_dim, target_names=[f"y{index}" for index in range(out_dim)])
        metadata["outputs"] = {
            "mean": [-1, out_dim],
            "covariance": [-1, out_dim, out_dim],
            "scale": [-1, out_dim, out_dim],
        }
    _write_metadata(version_dir, metadata)


@pytest.mark.parametrize(
    ("in_dim", "out_dim", "message"),
    [
        (IN_DIM, OUT_DIM + 1, "'mean' has shape ['batch', 2], expected [batch, 3]"),
        (IN_DIM + 1, OUT_DIM, "'x' has shape ['batch', 3], expected [batch, 4]"),
    ],
)
def test_graph_disagreeing_with_model_json_is_invalid(
    repository: Path, in_dim: int, out_dim: int, message: str
) -> None:
    version_dir = repository / DEMO / "1"
    _resize(version_dir, in_dim=in_dim, out_dim=out_dim)
    version = read_version(version_dir)  # consistent on its own, with the sha256 unchanged
    with pytest.raises(InvalidModelError) as raised:
        load_model(version, Device.CPU, THREADS)
    text = str(raised.value)
    assert text.startswith(f"{version_dir / MODEL_FILE}: ")
    assert message.replace("'batch'", _batch_axis_name(version_dir)) in text
    assert str(version_dir / METADATA_FILE) in text


def _batch_axis_name(version_dir: Path) -> str:
    """The exporter's symbolic name of the batch axis, as ONNX Runtime reports it (quoted)."""
    session = ort.InferenceSession(str(version_dir / MODEL_FILE), providers=[CPU_PROVIDER])
    return repr(session.get_inputs()[0].shape[0])


def test_renamed_output_is_invalid(repository: Path) -> None:
    version_dir = repository / DEMO / "1"
    proto = onnx.load(str(version_dir / MODEL_FILE))
    for node in proto.graph.node:  # the top-level graph has no subgraphs that could use "scale"
        node.input[:] = ["factor" if name == "scale" else name for name in node.input]
        node.output[:] = ["factor" if name == "scale" else name for name in node.output]
    for output in proto.graph.output:
        if output.name == "scale":
            output.name = "factor"
    _set_onnx(version_dir, proto.SerializeToString())
    with pytest.raises(InvalidModelError, match=r"outputs \[.*'factor'.*\], expected"):
        load_model(read_version(version_dir), Device.CPU, THREADS)


def test_unloadable_graph_is_invalid(repository: Path) -> None:
    version_dir = repository / DEMO / "1"
    _set_onnx(version_dir, b"not an onnx model")
    with pytest.raises(InvalidModelError, match="ONNX Runtime cannot load the model"):
        load_model(read_version(version_dir), Device.CPU, THREADS)


def test_a_model_replaced_after_the_scan_is_invalid(repository: Path) -> None:
    version = read_version(repository / DEMO / "1")
    shutil.copyfile(repository / OTHER / "1" / MODEL_FILE, version.model_path)
    with pytest.raises(InvalidModelError, match="changed since the repository scan"):
        load_model(version, Device.CPU, THREADS)


# ------------------------------------------------------------------------------------------------ imports


def test_runtime_and_repository_import_neither_torch_nor_onnx() -> None:
    code = (
        "import sys, covserve.service._runtime, covserve.service._repository; "
        "loaded = sorted({'torch', 'onnx', 'covserve.training'} & set(sys.modules)); "
        "assert not loaded, f'service imported {loaded}'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr

"""Export to the model repository, ONNX-only evaluation: real files, ONNX Runtime sessions and kills."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import signal
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray

from covserve.repository import METADATA_FILE, MODEL_FILE, SCHEMA_VERSION, TEMPORARY_PREFIX
from covserve.training.errors import UsageError
from covserve.training.evaluate import PREDICT_CHUNK_ROWS, evaluate_model, predict_onnx
from covserve.training.export import (
    OPSET,
    PARITY_RTOL,
    ExportError,
    ModelCard,
    export_model,
    read_published,
)
from covserve.training.metrics import compute_metrics
from covserve.training.networks import CovarianceModel, Standardisation
from tests.random_models import random_model

IN_DIM = 3
OUT_DIM = 2
KINDS = ("cholesky", "sqrt", "diagonal")
NAME = "demo"


def _inputs(rows: int, seed: int) -> NDArray[np.float64]:
    """Raw inputs far from standardised (offsets and scales per column)."""
    generator = np.random.default_rng(seed)
    inputs: NDArray[np.float64] = generator.normal(size=(rows, IN_DIM)) * [1.0, 10.0, 0.1] + [5.0, -3.0, 0.0]
    return inputs


def _targets(inputs: NDArray[np.float64], seed: int) -> NDArray[np.float64]:
    generator = np.random.default_rng(seed)
    signal_ = np.stack([np.sin(inputs[:, 0]) + 0.1 * inputs[:, 1], inputs[:, 2] * 10.0], axis=1)
    targets: NDArray[np.float64] = signal_ * [100.0, 0.5] + generator.normal(size=(len(inputs), OUT_DIM))
    return targets


TRAIN_INPUTS = _inputs(200, seed=1)
TRAIN_TARGETS = _targets(TRAIN_INPUTS, seed=2)


def build_model(kind: str, seed: int = 0, width: int = 16, warm_batchnorm: bool = True) -> CovarianceModel:
    """A small model with random weights and non-trivial BatchNorm statistics, left in training mode."""
    torch.manual_seed(seed)
    model = random_model(
        IN_DIM, OUT_DIM, kind, Standardisation.fit(TRAIN_INPUTS, TRAIN_TARGETS), width=width, depth=1
    )
    if not warm_batchnorm:
        return model
    with torch.no_grad():
        for _ in range(3):  # training-mode passes move the BatchNorm running statistics off (0, 1)
            model(torch.as_tensor(TRAIN_INPUTS[:32], dtype=torch.float32))
    return model


def build_card(name: str = NAME) -> ModelCard:
    return ModelCard(
        name=name,
        method="w2-bound",
        labels="residuals",
        input_names=("a", "b", "c"),
        target_names=("y0", "y1"),
        data_description="synthetic test data",
        split_sizes={"train": 200, "validation": 50, "test": 50},
        test_metrics={"nll": 1.25, "mse": 0.5},
        training_input_mean=TRAIN_INPUTS.mean(axis=0),
        training_input_covariance=np.cov(TRAIN_INPUTS, rowvar=False),
    )


def _torch_outputs(model: CovarianceModel, inputs: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    reference = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        outputs = reference(torch.as_tensor(inputs, dtype=torch.float32))
    return [tensor.double().numpy() for tensor in outputs]


def _session(version_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(version_dir / MODEL_FILE), providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Published:
    repository: Path
    models: dict[str, CovarianceModel]
    versions: dict[str, Path]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """Every exportable kind published, in KINDS order, as versions 1, 2, 3 of one model name."""
    repository = tmp_path_factory.mktemp("repository")
    crashed = repository / NAME / f"{TEMPORARY_PREFIX}crashed"  # what a killed export leaves behind
    crashed.mkdir(parents=True)
    (crashed / MODEL_FILE).write_bytes(b"partial")
    models: dict[str, CovarianceModel] = {}
    versions: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for kind in KINDS:
        models[kind] = build_model(kind)
        if kind == "diagonal":
            models[kind].double()  # the export must work on a float32 copy and leave this one alone
        start = time.perf_counter()
        versions[kind] = export_model(models[kind], build_card(), repository, _inputs(64, seed=3))
        seconds[kind] = time.perf_counter() - start
    return Published(repository, models, versions, seconds)


# --------------------------------------------------------------------------------------------- publishing


def test_versions_increment_and_ignore_temporaries(published: Published) -> None:
    assert [published.versions[kind] for kind in KINDS] == [
        published.repository / NAME / str(number) for number in (1, 2, 3)
    ]
    entries = sorted(entry.name for entry in (published.repository / NAME).iterdir())
    assert entries == [f"{TEMPORARY_PREFIX}crashed", "1", "2", "3"]
    print({kind: f"{seconds:.2f} s" for kind, seconds in published.seconds.items()})


def test_export_leaves_callers_model_alone(published: Published) -> None:
    for kind, model in published.models.items():
        assert model.training
        dtype = torch.float64 if kind == "diagonal" else torch.float32
        assert all(parameter.dtype == dtype for parameter in model.parameters())
        assert all(parameter.requires_grad for parameter in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_metadata(published: Published, kind: str) -> None:
    version_dir = published.versions[kind]
    assert sorted(path.name for path in version_dir.iterdir()) == [METADATA_FILE, MODEL_FILE]
    text = (version_dir / METADATA_FILE).read_text(encoding="utf-8")
    metadata = json.loads(text)
    assert text == json.dumps(metadata, sort_keys=True, indent=2) + "\n"
    assert read_published(version_dir).model_dump(mode="json") == metadata
    onnx_bytes = (version_dir / MODEL_FILE).read_bytes()
    opsets = {entry.domain: entry.version for entry in onnx.load_from_string(onnx_bytes).opset_import}
    card = build_card()
    created = metadata.pop("created")
    assert metadata == {
        "schema_version": SCHEMA_VERSION,
        "name": NAME,
        "version": int(version_dir.name),
        "input_names": ["a", "b", "c"],
        "target_names": ["y0", "y1"],
        "in_dim": IN_DIM,
        "out_dim": OUT_DIM,
        "method": "w2-bound",
        "hybrid_epochs": 0,
        "labels": "residuals",
        "neighbour_search": None,
        "parameterisation": kind,
        "opset": opsets[""],
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "outputs": {"mean": [-1, 2], "covariance": [-1, 2, 2], "scale": [-1, 2, 2]},
        "data": {"description": "synthetic test data", "split_sizes": card.split_sizes},
        "test_metrics": card.test_metrics,
        "training_inputs": {
            "mean": card.training_input_mean.tolist(),
            "covariance": card.training_input_covariance.tolist(),
        },
        "covserve_version": package_version("covserve"),
    }
    assert metadata["opset"] == OPSET
    timestamp = datetime.fromisoformat(created)
    assert timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_matches_torch(published: Published, kind: str, batch: int) -> None:
    inputs = _inputs(batch, seed=10 + batch)
    session = _session(published.versions[kind])
    assert [node.name for node in session.get_inputs()] == ["x"]
    assert [node.name for node in session.get_outputs()] == ["mean", "covariance", "scale"]
    produced = session.run(None, {"x": inputs.astype(np.float32)})
    expected = _torch_outputs(published.models[kind], inputs)
    shapes = [(batch, OUT_DIM), (batch, OUT_DIM, OUT_DIM), (batch, OUT_DIM, OUT_DIM)]
    for got, want, shape in zip(produced, expected, shapes, strict=True):
        assert got.shape == shape
        assert got.dtype == np.float32
        assert np.max(np.abs(got - want)) <= PARITY_RTOL * np.max(np.abs(want))
    covariance, scale = (np.asarray(array, dtype=np.float64) for array in produced[1:])
    np.testing.assert_array_equal(covariance, np.swapaxes(covariance, -1, -2))
    np.testing.assert_allclose(scale @ np.swapaxes(scale, -1, -2), covariance, rtol=1e-5, atol=1e-7)
    assert np.all(np.linalg.eigvalsh(covariance) > 0.0)
    np.linalg.cholesky(covariance)


# --------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_model_matches_torch_metrics(published: Published, kind: str) -> None:
    rows = PREDICT_CHUNK_ROWS + 5  # more than one ONNX Runtime call
    inputs = _inputs(rows, seed=20)
    targets = _targets(inputs, seed=21)
    generator = np.random.default_rng(22)
    true_mean = targets + 0.1 * generator.normal(size=targets.shape)
    root = generator.normal(size=(rows, OUT_DIM, OUT_DIM))
    true_covariance = root @ np.swapaxes(root, -1, -2) + 0.5 * np.eye(OUT_DIM)

    evaluation = evaluate_model(
        published.versions[kind], inputs, targets, true_mean=true_mean, true_covariance=true_covariance
    )
    torch_mean, torch_covariance, _ = _torch_outputs(published.models[kind], inputs)
    expected = compute_metrics(
        torch_mean, torch_covariance, targets, true_mean=true_mean, true_covariance=true_covariance
    )
    assert set(evaluation.metrics) == {
        "mse",
        "nll",
        "tac",
        "calibration_error",
        "kl_to_truth",
        "w2_to_truth",
        "samples",
    }
    assert all(np.isfinite(value) for value in evaluation.metrics.values())
    assert evaluation.metrics["samples"] == rows
    for key, value in expected.items():
        assert evaluation.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    mean, covariance = predict_onnx(published.versions[kind], inputs[:10])
    assert mean.shape == (10, OUT_DIM)
    assert covariance.shape == (10, OUT_DIM, OUT_DIM)
    without_truth = evaluate_model(published.versions[kind], inputs[:100], targets[:100]).metrics
    assert set(without_truth) == {"mse", "nll", "tac", "calibration_error", "samples"}


def test_evaluate_rejects_wrong_columns(published: Published) -> None:
    version_dir = published.versions["cholesky"]
    inputs = _inputs(5, seed=30)
    with pytest.raises(UsageError, match=r"inputs: expected 3 columns.*got 4 columns"):
        evaluate_model(version_dir, np.hstack([inputs, inputs[:, :1]]), np.zeros((5, OUT_DIM)))
    with pytest.raises(UsageError, match=r"targets: expected 2 columns.*got 1 columns"):
        evaluate_model(version_dir, inputs, np.zeros((5, 1)))
    with pytest.raises(UsageError, match=r"inputs: expected 3 columns.*got 2 columns"):
        predict_onnx(version_dir, inputs[:, :2])
    with pytest.raises(UsageError, match=r"inputs: row 2 is not finite"):
        predict_onnx(version_dir, np.where(np.arange(5)[:, None] == 2, np.nan, inputs))


def test_compute_metrics_needs_both_truths() -> None:
    mean = np.zeros((4, OUT_DIM))
    covariance = np.broadcast_to(np.eye(OUT_DIM), (4, OUT_DIM, OUT_DIM))
    with pytest.raises(ValueError, match="give both"):
        compute_metrics(mean, covariance, mean, true_mean=mean)


def test_read_metadata_detects_missing_and_corrupt_files(published: Published, tmp_path: Path) -> None:
    copy_dir = tmp_path / "1"
    copy_dir.mkdir()
    for name in (MODEL_FILE, METADATA_FILE):
        (copy_dir / name).write_bytes((published.versions["sqrt"] / name).read_bytes())
    read_published(copy_dir)

    model_bytes = bytearray((copy_dir / MODEL_FILE).read_bytes())
    model_bytes[len(model_bytes) // 2] ^= 0xFF
    (copy_dir / MODEL_FILE).write_bytes(bytes(model_bytes))
    with pytest.raises(UsageError, match=r"model\.onnx: corrupt"):
        read_published(copy_dir)
    with pytest.raises(UsageError, match=r"model\.onnx: corrupt"):
        predict_onnx(copy_dir, _inputs(2, seed=31))

    (copy_dir / MODEL_FILE).unlink()
    with pytest.raises(UsageError, match=r"model\.onnx: missing"):
        read_published(copy_dir)
    (copy_dir / MODEL_FILE).write_bytes((published.versions["sqrt"] / MODEL_FILE).read_bytes())
    (copy_dir / METADATA_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match=r"model\.json: not valid JSON"):
        read_published(copy_dir)
    (copy_dir / METADATA_FILE).unlink()
    with pytest.raises(UsageError, match=r"model\.json: missing"):
        read_published(copy_dir)


# ----------------------------------------------------------------------------------------------- failures


def test_tic_is_refused_before_any_work(tmp_path: Path) -> None:
    model = build_model("tic", warm_batchnorm=False)
    with pytest.raises(UsageError, match=r"--method nll-tic: the tic covariance cannot be exported to ONNX"):
        export_model(model, build_card(), tmp_path / "repository", _inputs(4, seed=40))
    assert not (tmp_path / "repository").exists()


def test_invalid_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--name '\.\./escape'"):
        export_model(build_model("diagonal"), build_card("../escape"), tmp_path, _inputs(4, seed=41))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (_inputs(4, seed=42)[:, :2], r"expected shape \(N, 3\).*got \(4, 2\)"),
        (np.full((4, IN_DIM), np.nan), r"row 0 is not finite"),
        (np.zeros((0, IN_DIM)), r"expected shape \(N, 3\) with N >= 1"),
    ],
)
def test_bad_verification_inputs_publish_nothing(
    tmp_path: Path, inputs: NDArray[np.float64], message: str
) -> None:
    with pytest.raises(ExportError, match=message):
        export_model(build_model("cholesky"), build_card(), tmp_path, inputs)
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_publishes_nothing(tmp_path: Path) -> None:
    model = build_model("sqrt")
    with torch.no_grad():
        last = model.covariance_network.network[-1]
        assert isinstance(last, torch.nn.Linear)
        last.bias.fill_(float("nan"))
    with pytest.raises(ExportError, match=r"torch output 'covariance' is not finite for verification row 0"):
        export_model(model, build_card(), tmp_path, _inputs(8, seed=43))
    assert list(tmp_path.rglob("*")) == []


# --------------------------------------------------------------------------------------------- atomicity


CHILD_WIDTH = 512


def _fork_exporter(repository: Path, kind: str, seed: int, log: Path) -> int:
    """Fork a process that exports ``kind`` into ``repository`` forever; return its pid.

    Forking inherits this process's warm exporter: a fresh interpreter spends 10-15 s importing
    torch._dynamo and onnxscript's op registry before its first export, forked children start at once.
    """
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a multi-threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    status = 0
    try:
        torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork: using it deadlocks
        os.nice(10)  # the polling parent must get the CPU as soon as a child starts publishing
        model = build_model(kind, seed=seed, width=CHILD_WIDTH)  # megabytes: a longer write to hit
        while True:
            export_model(model, build_card(), repository, _inputs(16, seed=5))
    except BaseException:
        status = 1
        log.write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        os._exit(status)  # never return into pytest


def _kill(pids: list[int], logs: list[Path]) -> None:
    """SIGKILL every exporter (all first, then reap them); fail if one had exited by itself."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid, log in zip(pids, logs, strict=True):
        _, status = os.waitpid(pid, 0)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            details = log.read_text(encoding="utf-8") if log.exists() else "(no log)"
            pytest.fail(f"exporter {pid} exited by itself with wait status {status}:\n{details}")


PUBLICATION_LIMIT_SECONDS = 180.0


def _wait_for_second_publication(model_dir: Path, before: set[str]) -> None:
    """Return once a version appeared after ``before`` and then a new ``.tmp-*`` directory (or give up).

    The limit is generous because an export (trace, verify, write) slows down many times on a loaded
    machine; it bounds a hang, it does not time the export."""
    give_up = time.monotonic() + PUBLICATION_LIMIT_SECONDS
    after_first: set[str] | None = None
    while time.monotonic() < give_up:
        entries = set(os.listdir(model_dir)) if model_dir.exists() else set()
        if after_first is None:
            if any(not name.startswith(TEMPORARY_PREFIX) for name in entries - before):
                after_first = entries
                give_up = min(give_up, time.monotonic() + 10.0)
        elif any(name.startswith(TEMPORARY_PREFIX) for name in entries - after_first):
            return
        time.sleep(0.001)  # publishing a child's 4 MB model takes >= 10 ms
    if after_first is None:
        pytest.fail(f"no exporter published a version within {PUBLICATION_LIMIT_SECONDS:.0f} s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")
def test_killed_exports_never_leave_a_partial_version(published: Published, tmp_path: Path) -> None:
    """SIGKILL real exporting processes at random times and in the middle of publishing.

    Two exporters race for versions of the same name. Round 1 kills each at a uniformly random time
    (tracing, verifying or writing); round 2 lets one version be published, then polls the model
    directory and kills both as soon as the next ``.tmp-*`` directory appears, i.e. while its files are
    being written. Every version directory left must be complete and the numbering gapless.
    (``published`` only makes sure this process has exported once, so forked children start warm.)
    """
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    repository = tmp_path / "repository"
    model_dir = repository / NAME
    logs = [tmp_path / f"exporter-{index}.log" for index in range(4)]

    pids = [_fork_exporter(repository, kind, index, logs[index]) for index, kind in enumerate(KINDS[:2])]
    start = time.monotonic()
    for deadline, index in sorted((rng.uniform(0.2, 4.0), index) for index in range(2)):
        time.sleep(max(0.0, start + deadline - time.monotonic()))
        _kill([pids[index]], [logs[index]])

    before = set(os.listdir(model_dir)) if model_dir.exists() else set()
    pids = [
        _fork_exporter(repository, kind, index, logs[index]) for index, kind in enumerate(KINDS[:2], start=2)
    ]
    try:
        _wait_for_second_publication(model_dir, before)
    finally:
        _kill(pids, logs[2:])

    entries = os.listdir(model_dir)
    temporaries = [name for name in entries if name.startswith(TEMPORARY_PREFIX)]
    versions = sorted(int(name) for name in entries if name not in temporaries)
    assert versions, (entries, seed)
    assert versions == list(range(1, len(versions) + 1)), (entries, seed)
    for number in versions:
        version_dir = model_dir / str(number)
        assert sorted(os.listdir(version_dir)) == [METADATA_FILE, MODEL_FILE], (entries, seed)
        metadata = read_published(version_dir)  # valid JSON whose sha256 matches model.onnx
        assert metadata.version == number, (entries, seed)
    print(f"seed {seed}: {entries}")

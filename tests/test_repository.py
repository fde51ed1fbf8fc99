"""The model-repository contract (``covserve.repository``) on a real exported version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from covserve.repository import (
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILE,
    OUTPUT_NAMES,
    SCHEMA_VERSION,
    ContractError,
    check_interface,
    is_version_name,
    metadata_bytes,
    read_metadata,
    session_options,
    sha256_file,
)
from tests.service_fixtures import export_tiny_model

IN_DIM = 3
OUT_DIM = 2


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("models"), "tiny", IN_DIM, OUT_DIM, "cholesky", seed=3)


@pytest.fixture
def version_dir(published: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tiny" / "1"
    shutil.copytree(published, copy)
    return copy


def _rewrite(version_dir: Path, edit: dict[str, object], drop: tuple[str, ...] = ()) -> None:
    path = version_dir / METADATA_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    document.update(edit)
    for key in drop:
        del document[key]
    path.write_text(json.dumps(document), encoding="utf-8")


def test_an_export_writes_the_current_schema_and_reads_back_identically(version_dir: Path) -> None:
    metadata = read_metadata(version_dir)
    assert metadata.schema_version == SCHEMA_VERSION
    assert (metadata.name, metadata.version, metadata.in_dim, metadata.out_dim) == (
        "tiny",
        1,
        IN_DIM,
        OUT_DIM,
    )
    assert metadata.onnx_sha256 == sha256_file(version_dir / MODEL_FILE)
    assert (version_dir / METADATA_FILE).read_bytes() == metadata_bytes(metadata)


def test_a_model_json_from_before_schema_version_still_loads(version_dir: Path) -> None:
    _rewrite(version_dir, {}, drop=("schema_version", "labels", "hybrid_epochs"))
    metadata = read_metadata(version_dir)
    assert (metadata.schema_version, metadata.labels, metadata.hybrid_epochs) == (SCHEMA_VERSION, None, 0)


def test_a_newer_schema_gets_a_clear_message(version_dir: Path) -> None:
    _rewrite(version_dir, {"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ContractError, match=r"model\.json: 'schema_version' 2 is not 1") as raised:
        read_metadata(version_dir)
    assert "export the model again" in raised.value.reason


def test_non_finite_metrics_are_refused(version_dir: Path) -> None:
    path = version_dir / METADATA_FILE
    path.write_text(path.read_text(encoding="utf-8").replace('"nll": 1.0', '"nll": NaN'), encoding="utf-8")
    with pytest.raises(ContractError, match=r"'test_metrics'\['nll'\]"):
        read_metadata(version_dir)


def test_location_checks_can_be_left_to_repository_readers(version_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "copied-out"
    shutil.copytree(version_dir, elsewhere)
    with pytest.raises(ContractError, match="the directory name 'copied-out' differs from 'version' 1"):
        read_metadata(elsewhere)
    assert read_metadata(elsewhere, check_location=False).version == 1


def test_the_interface_check_accepts_the_export_and_names_what_disagrees(version_dir: Path) -> None:
    session = ort.InferenceSession(
        str(version_dir / MODEL_FILE), session_options(2, 3), providers=["CPUExecutionProvider"]
    )
    assert [node.name for node in session.get_inputs()] == [INPUT_NAME]
    assert tuple(node.name for node in session.get_outputs()) == OUTPUT_NAMES
    check_interface(session, version_dir / MODEL_FILE, IN_DIM, OUT_DIM)
    with pytest.raises(ContractError, match=r"'x' has shape \[.*\], expected \[batch, 4\]: axis 1"):
        check_interface(session, version_dir / MODEL_FILE, IN_DIM + 1, OUT_DIM)


def test_session_options_set_the_threads_and_sequential_execution() -> None:
    options = session_options(3, 4)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.log_severity_level == 4


@pytest.mark.parametrize(("name", "expected"), [("1", True), ("12", True), (".tmp-ab", False), ("١", False)])
def test_only_decimal_ascii_names_are_versions(name: str, expected: bool) -> None:
    assert is_version_name(name) is expected

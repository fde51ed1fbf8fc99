"""The public surface: explicit ``__all__`` everywhere, console scripts, and a torch-free service."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import covserve
from covserve import _scripts

MODULES = [
    "covserve",
    "covserve._scripts",
    "covserve.repository",
    "covserve.training",
    "covserve.training.atomic",
    "covserve.training.cli",
    "covserve.training.covariance",
    "covserve.training.labelling",
    "covserve.training.losses",
    "covserve.training.metrics",
    "covserve.training.numerics",
    "covserve.training.pipeline",
    "covserve.training.pseudolabels",
    "covserve.training.synthetic",
    "covserve.training.estimator",
    "covserve.client",
    "covserve._lazy",
    "covserve.client._async",
    "covserve.client._base",
    "covserve.client._errors",
    "covserve.client._protocol",
    "covserve.client._sync",
    "covserve.distribution",
    "covserve.gaussian",
    "covserve.service",
    "covserve.service.cli",
    "covserve.service._access",
    "covserve.service._app",
    "covserve.service._body",
    "covserve.service._data_plane",
    "covserve.service._errors",
    "covserve.service._inference",
    "covserve.service._metrics",
    "covserve.service._registry",
    "covserve.service._v1",
    "covserve.service._oip",
    "covserve.service._oip_routes",
    "covserve.service._requests",
    "covserve.service._responses",
    "covserve.service._routing",
    "covserve.service._repository",
    "covserve.service._runtime",
    "covserve.service._settings",
]
SCRIPTS = Path(sys.executable).parent


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_definitions(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert all(hasattr(module, item) for item in exported), exported - set(dir(module))
    defined_here = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == name
    }
    assert defined_here <= exported, defined_here - exported


@pytest.mark.parametrize("script", ["covserve-train", "covserve-serve"])
def test_console_scripts_report_the_version(script: str) -> None:
    result = subprocess.run([str(SCRIPTS / script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"covserve {covserve.__version__}"


@pytest.mark.parametrize("name", ["training", "service"])
def test_only_the_covserve_namespace_is_installed(name: str, tmp_path: Path) -> None:
    """A user's own ``training/`` or ``service/`` never collides with ours: we install no such top level."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is not None)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"an installed top-level {name!r} package exists"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("USER_CODE = True\n")
    code = (
        f"import {name}, covserve.{name}.cli; "
        f"assert {name}.USER_CODE and covserve.{name}.cli.__file__ != {name}.__file__"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy, so the build's own build/ folder never lands in the checkout
    shutil.copytree(root / "covserve", source / "covserve", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
        str(source),
    ]
    subprocess.run(command, capture_output=True, check=True)
    (wheel,) = tmp_path.glob("covserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(name for name in names if name.endswith(".dist-info/top_level.txt"))
        assert archive.read(top_level).decode().split() == ["covserve"]
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {
        "covserve"
    }
    assert "covserve/service/cli.py" in names
    assert "covserve/training/cli.py" in names


def test_covserve_train_without_the_training_extra_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_scripts, "TRAIN_EXTRA_MODULES", ("torch", "covserve_absent_extra_module"))
    assert _scripts.train() == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "missing: covserve_absent_extra_module" in error
    assert "pip install 'covserve[train]'" in error


@pytest.mark.parametrize("name", ["CovarianceRegressor", "Client", "AsyncClient", "PredictiveDistribution"])
def test_the_entry_points_import_from_the_top_level(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"from covserve import {name}; print({name}.__name__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_the_service_package_never_imports_torch() -> None:
    code = (
        "import sys, covserve.service, covserve.service.cli, covserve.gaussian, "
        "covserve.service._app; "
        "assert 'torch' not in sys.modules, 'service imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("covserve.training.trainer", ("onnxruntime", "onnx")),
        ("covserve.repository", ("torch", "onnx", "onnxruntime", "covserve.training")),
        ("covserve.client", ("torch", "onnxruntime", "fastapi", "covserve.service", "covserve.training")),
        ("covserve", ("torch", "sklearn", "httpx", "onnxruntime", "covserve.service", "covserve.training")),
    ],
)
def test_modules_do_not_import_what_they_do_not_need(module: str, absent: tuple[str, ...]) -> None:
    code = (
        f"import sys, {module}; loaded = sorted(set({absent!r}) & set(sys.modules)); "
        "assert not loaded, f'imported {loaded}'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["fit", "--help"], ["fit", "--data", "absent.csv"], ["evaluate", "--help"]],
)
def test_help_and_usage_errors_answer_without_importing_torch(argv: list[str], tmp_path: Path) -> None:
    code = (
        "import sys\nfrom covserve.training.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "loaded = sorted({'torch', 'onnx', 'onnxruntime', 'matplotlib', 'scipy'} & set(sys.modules))\n"
        "assert not loaded, f'imported {loaded}'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr

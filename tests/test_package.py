"""The public surface: explicit ``__all__`` everywhere, console scripts, and a torch-free service."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import service
import training

MODULES = [
    "training",
    "training.atomic",
    "training.cli",
    "training.covariance",
    "training.gaussian",
    "training.labelling",
    "training.losses",
    "training.metrics",
    "training.numerics",
    "training.pseudolabels",
    "training.synthetic",
    "service",
    "service.cli",
    "service.gaussian",
    "service._access",
    "service._app",
    "service._body",
    "service._direct",
    "service._errors",
    "service._inference",
    "service._metrics",
    "service._models",
    "service._native",
    "service._oip",
    "service._oip_routes",
    "service._openapi",
    "service._repository",
    "service._runtime",
    "service._settings",
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


@pytest.mark.parametrize(("script", "package"), [("covserve-train", training), ("covserve-serve", service)])
def test_console_scripts_report_the_version(script: str, package: object) -> None:
    result = subprocess.run([str(SCRIPTS / script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"covserve {package.__version__}"  # type: ignore[attr-defined]


def test_the_service_package_never_imports_torch() -> None:
    code = (
        "import sys, service, service.cli, service.gaussian, service._app; "
        "assert 'torch' not in sys.modules, 'service imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr

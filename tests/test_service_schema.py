"""The OpenAPI document matches what the server does: schemathesis ``--checks all`` against a real server.

A body that fits the schema can still not fit the model (feature names, widths, the row limit), so for
positive data the client statuses the document lists (400, 413, 422) count as accepted; every other check
runs as shipped. ``benchmarks/reliability.py`` runs the same with a larger budget.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from covserve.service import Settings
from tests.service_fixtures import running_server

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CONFIG = """[parameters]
name = "{model}"

[checks.positive_data_acceptance]
expected-statuses = ["2xx", 400, 401, 403, 404, 409, 413, 422, 429]
"""
MAX_EXAMPLES = 10
SEED = 1


def test_schemathesis_checks_all_find_nothing(served_repository: Path, tmp_path: Path) -> None:
    """On its own server and repository copy: the stateful phase loads and unloads models."""
    repository = tmp_path / "models"
    shutil.copytree(served_repository, repository)
    with running_server(Settings(repository=repository, threads=1)) as url:
        result = _schemathesis(url, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    summary = result.stdout.splitlines()
    assert any(line.strip().endswith("passed") and "generated" in line for line in summary), result.stdout


def _schemathesis(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(model="alpha"), encoding="utf-8")
    return subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(config),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )

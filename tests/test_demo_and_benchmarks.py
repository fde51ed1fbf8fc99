"""The documented entry points run: ``make demo``'s module and the benchmarks' ``--quick`` smoke modes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_configuration_trains_and_publishes(tmp_path: Path) -> None:
    """``make demo`` runs ``covserve-train fit --config configs/demo.yaml``; here with one epoch."""
    output = ["--repository", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs")]
    code = cli_main(
        ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--epochs", "1", "--no-progress", *output]
    )
    assert code == 0
    assert (tmp_path / "models" / "demo" / "1" / "model.onnx").is_file()
    assert "covserve-train fit --config configs/demo.yaml" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("script", ["tac.py", "pseudolabels.py", "serving.py"])
def test_benchmark_quick_mode_writes_a_table(script: str, tmp_path: Path) -> None:
    output = tmp_path / "result.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert "Machine:" in text
    assert text.count("\n| ") >= 3, text


def test_the_readme_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    assert blocks, "README.md has no python example"
    for block in blocks:
        exec(compile(block.split("```", 1)[0], "README.md", "exec"), {})
    assert "torch.Size([32, 4, 4]) torch.Size([32])" in capsys.readouterr().out

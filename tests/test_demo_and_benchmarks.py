"""The documented entry points run: ``make demo``'s module and the benchmarks' ``--quick`` smoke modes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service import Settings
from tests.service_fixtures import export_tiny_model, running_server
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


UCI_DIR = ROOT.parent / "shared" / "datasets" / "uci"


@pytest.mark.parametrize(
    ("script", "extra", "outputs"),
    [
        ("synthetic.py", [], ["synthetic.md", "synthetic_cost.png", "synthetic_accuracy.png"]),
        ("uci.py", ["--data-dir", str(UCI_DIR)], ["uci.md"]),
    ],
)
def test_evidence_benchmarks_quick_mode_writes_tables_and_plots(
    script: str, extra: list[str], outputs: list[str], tmp_path: Path
) -> None:
    if script == "uci.py" and not UCI_DIR.is_dir():
        pytest.skip(f"{UCI_DIR} is not present")
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--output-dir", str(tmp_path)]
    result = subprocess.run([*command, *extra], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
    text = (tmp_path / outputs[0]).read_text()
    assert "Machine:" in text
    assert "| w2-bound |" in text


def _readme_python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return [block.split("```", 1)[0] for block in readme.split("```python\n")[1:]]


def test_the_readme_python_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The training example as written; the client examples against a real server over a ``demo``-shaped
    model (their ``localhost:8000`` replaced by the test server's address)."""
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2, "README.md lacks the training or the tritonclient example"
    export_tiny_model(tmp_path / "models", "demo", in_dim=4, out_dim=4, kind="sqrt", seed=0)
    with running_server(Settings(repository=tmp_path / "models", threads=1)) as url:
        for block in blocks:
            code = block.replace("localhost:8000", url.removeprefix("http://"))
            exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([32, 4, 4]) torch.Size([32])" in printed
    assert "(1, 4) (1, 4, 4)" in printed

"""The documented entry points run: ``make demo``'s module and the benchmarks' ``--quick`` smoke modes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.demo import main as demo_main

ROOT = Path(__file__).resolve().parent.parent


def test_demo_ranks_pseudo_labels_between_the_homoscedastic_baseline_and_the_truth(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert demo_main(["--dim", "2", "--seed", "1"]) == 0
    rows = {
        line.split()[0]: [float(v) for v in line.split()[1:]]
        for line in capsys.readouterr().out.splitlines()[2:]
    }
    assert set(rows) == {"homoscedastic", "pseudo-labels", "truth"}
    kl_column, w2_column = 3, 4
    for column in (kl_column, w2_column):
        assert rows["truth"][column] == 0.0
        assert rows["pseudo-labels"][column] < rows["homoscedastic"][column]


@pytest.mark.parametrize("script", ["tac.py", "pseudolabels.py"])
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

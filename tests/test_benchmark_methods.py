"""The benchmarks' shared fit helper: a diverged fit is recorded and counted in the tables, not fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.degenerate_data import constant_target_split
from training.config import ModelConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_a_diverged_fit_is_recorded_and_counted_in_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _methods

    metrics = _methods.fit_and_score(
        _methods.Method("w2"),
        constant_target_split(),
        epochs=2,
        lr=1e-3,
        seed=0,
        calibrate=False,
        model=ModelConfig(width=8, depth=1),
    )
    assert set(metrics) == {_methods.DIVERGED, "fit_seconds"}
    assert metrics[_methods.DIVERGED] == 1.0
    assert "w2 diverged: non-finite gradient" in capsys.readouterr().out

    results = [
        _methods.Result("w2", 0, metrics),
        _methods.Result("w2", 1, {"nll": 2.0}),
        _methods.Result("nll", 0, {"nll": 1.5}),
    ]
    table = _methods.markdown_table(results, ["w2", "nll"], [("nll", "NLL")])
    assert table[2:] == ["| w2 (1 of 2 diverged) | 2 ± 0 |", "| nll | **1.5 ± 0** |"]

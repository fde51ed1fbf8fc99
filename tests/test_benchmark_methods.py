"""The benchmarks' shared helpers: a diverged fit (or a peer's failed one) is recorded and counted in the
tables, not fatal; the per-row W2² breakdown of ``w2_rows.py`` matches hand-computed rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covserve.training.compare import Result, markdown_table, method_label
from covserve.training.config import ModelConfig
from covserve.training.methods import DIVERGED, FAILED, fit_ngboost, score_peer
from tests.degenerate_data import constant_target_split, linearly_dependent_target_split

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
    assert set(metrics) == {DIVERGED, "fit_seconds"}
    assert metrics[DIVERGED] == 1.0
    assert "w2 diverged: non-finite gradient" in capsys.readouterr().out

    results = [
        Result("w2", 0, metrics),
        Result("w2", 1, {"nll": 2.0, "fit_seconds": 5.0}),
        Result("nll", 0, {"nll": 1.5, "fit_seconds": 6.0}),
    ]
    table = markdown_table(results, ["w2", "nll"], [("nll", "NLL"), ("fit_seconds", "fit s")])
    assert table[2:] == [
        "| w2 (1 of 2 diverged) | 2 ± 0 | **5 ± 0** |",
        "| nll (1 of 2 trials) | **1.5 ± 0** | 6 ± 0 |",
    ]


def test_ngboost_on_linearly_dependent_targets_is_recorded_as_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NGBoost's start inverts the targets' covariance; on singular targets (UCI electrical) the benchmark
    records the fit as failed and the table counts it, instead of ending the run with a traceback."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    metrics = fit_ngboost(linearly_dependent_target_split(), estimators=5, seed=0)

    assert set(metrics) == {FAILED, "fit_seconds"}
    assert "ngboost failed:" in capsys.readouterr().out
    results = [Result("ngboost", trial, metrics) for trial in range(2)]
    results += [Result("nll", trial, {"nll": 1.5}) for trial in range(2)]
    table = markdown_table(results, ["nll", "ngboost"], [("nll", "NLL"), ("fit_seconds", "fit s")])
    assert table[2:] == ["| nll | **1.5 ± 0** | — |", "| ngboost (2 of 2 failed) | — | — |"]


def test_a_peer_covariance_that_is_not_symmetric_is_recorded_as_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NGBoost trained on electrical's split 1 predicted a covariance with ``|S − Sᵀ|`` 0.0024 against
    entries of 7.5: the fit is recorded as failed, and a valid prediction is scored."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    mean, targets = np.zeros((4, 2)), np.ones((4, 2))
    covariance = np.repeat(np.eye(2)[None], 4, axis=0)
    valid = score_peer(mean, covariance, targets, seconds=3.0)
    assert valid["nll"] == pytest.approx(np.log(2.0 * np.pi) + 1.0)
    assert valid["fit_seconds"] == 3.0
    covariance[2, 0, 1] = 0.5

    assert score_peer(mean, covariance, targets, seconds=3.0) == {
        FAILED: 1.0,
        "fit_seconds": 3.0,
    }
    assert (
        "ngboost failed: its prediction is not a valid Gaussian: covariance: sample 2 is not symmetric"
        in (capsys.readouterr().out)
    )


def test_the_per_row_w2_breakdown_against_hand_computed_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """``w2_rows.py``'s statistics: 99 exact rows and one with 4× the true covariance and a shifted mean.

    For ``Σ = 4 Σ*`` the Bures term is ``tr(Σ* + 4 Σ* − 2 · 2 Σ*) = tr(Σ*)``, and KL(truth ‖ prediction) is
    ``0.5 (D / 4 + ‖δ‖²_{(4Σ*)⁻¹} − D + D ln 4)``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import w2_rows

    rng = np.random.default_rng(0)
    rows, dim = 100, 3
    factors = rng.normal(size=(rows, dim, dim))
    true_covariance = factors @ factors.transpose(0, 2, 1) + np.eye(dim)
    true_mean = rng.normal(size=(rows, dim))
    covariance, mean = true_covariance.copy(), true_mean.copy()
    covariance[7] *= 4.0
    mean[7] += 2.0
    inputs = rng.uniform(-1.0, 1.0, size=(rows, 2))
    inputs[7] = [1.0, 1.0]

    cells = w2_rows._row_statistics(inputs, true_mean, true_covariance, mean, covariance)

    bures = np.trace(true_covariance[7])
    shift = 4.0 * dim
    assert cells["w2_max"] == pytest.approx(bures + shift)
    assert cells["w2_mean"] == pytest.approx((bures + shift) / rows)
    assert cells["w2_median"] == pytest.approx(0.0, abs=1e-9)
    assert cells["worst_share"] == pytest.approx(1.0)
    assert cells["covariance_share"] == pytest.approx(bures / (bures + shift))
    mahalanobis = 2.0 * np.ones(dim) @ np.linalg.solve(4.0 * true_covariance[7], 2.0 * np.ones(dim))
    kl = 0.5 * (dim / 4.0 + mahalanobis - dim + dim * np.log(4.0))
    assert cells["kl_mean"] == pytest.approx(kl / rows)
    assert cells["worst_kl_share"] == pytest.approx(1.0)
    assert cells["largest_max"] == pytest.approx(4.0)
    assert cells["largest_median"] == pytest.approx(1.0)
    assert cells["smallest_median"] == pytest.approx(1.0)
    assert cells["worst_distance"] > 1.0


def test_a_method_with_fewer_trials_than_its_cell_says_how_many() -> None:
    results = [
        Result("nll", 0, {"nll": 1.0}),
        Result("nll", 1, {"nll": 1.2}),
        Result("kl", 0, {"nll": 2.0}),
    ]
    assert method_label(results, "kl") == "kl (1 of 2 trials)"
    assert method_label(results, "nll") == "nll"

"""Tests of ``training.plots``: real PNG files, atomic writes, argument validation and ellipse geometry."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import IO

import matplotlib.image
import matplotlib.path
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from numpy.typing import NDArray
from scipy import stats

from covserve.training.plots import (
    MAX_POINTS,
    calibration_curve,
    correlation_heatmap,
    covariance_ellipses,
    ellipse_parameters,
    learning_curves,
    mean_correlation,
    metric_title,
    predicted_vs_true,
    y_scale,
)

FloatArray = NDArray[np.float64]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The eight bytes every PNG file starts with."""

RGBA_CHANNELS = 4
"""The Agg canvas writes RGBA PNGs."""

MIN_SIDE_PIXELS = 100
"""Every image must be larger than this in both directions."""

EXACT_RTOL = 1e-12
"""Relative tolerance between two float64 evaluations of the same closed form."""

ELLIPSE_SEGMENT_ENDS = 9
"""matplotlib's unit circle: a start point and eight cubic Bezier segments, whose ends lie on the circle."""

SAMPLES = 200
"""Samples of the small synthetic predictions used by the plotting tests."""

LEVEL = 0.9
"""Default probability mass inside a drawn covariance ellipse."""


def _assert_png(path: Path) -> None:
    """``path`` is a readable RGBA PNG larger than ``MIN_SIDE_PIXELS`` and alone in its directory."""
    assert path.read_bytes()[: len(PNG_SIGNATURE)] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[2] == RGBA_CHANNELS
    assert image.shape[0] > MIN_SIDE_PIXELS
    assert image.shape[1] > MIN_SIDE_PIXELS
    assert [entry.name for entry in path.parent.iterdir()] == [path.name], "temporary file left behind"


def _predictions(samples: int, dims: int, seed: int = 0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Predicted means, targets and predicted standard deviations, each (samples, dims)."""
    generator = np.random.default_rng(seed)
    mean = generator.normal(size=(samples, dims))
    std = generator.uniform(0.1, 1.0, size=(samples, dims))
    target = mean + std * generator.normal(size=(samples, dims))
    return mean, target, std


def _covariances(samples: int, seed: int = 0) -> FloatArray:
    """Random symmetric positive-definite 2x2 covariances, shape (samples, 2, 2)."""
    generator = np.random.default_rng(seed)
    factor = generator.normal(size=(samples, 2, 2))
    covariance: FloatArray = factor @ np.swapaxes(factor, -1, -2) + 0.1 * np.eye(2)
    return covariance


def _ellipse_inputs(samples: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Targets (samples, 2), predicted means (samples, 2) and predicted covariances (samples, 2, 2)."""
    mean, target, _ = _predictions(samples, 2)
    return target, mean, _covariances(samples)


def _history() -> list[dict[str, object]]:
    """Five epochs: a positive (log-scaled) metric, a signed one, one with a gap and a NaN, a string field."""
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "val_nll": -0.1 * epoch,
            "lr": None if epoch == 3 else math.nan if epoch == 2 else 1e-3 * 0.5**epoch,
            "phase": "warmup" if epoch == 1 else "main",
        }
        for epoch in range(1, 6)
    ]


def test_learning_curves_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "learning_curves.png"
    assert learning_curves(_history(), path) == path
    _assert_png(path)


def test_learning_curves_single_epoch_without_epoch_key(tmp_path: Path) -> None:
    path = learning_curves([{"train_loss": 0.5, "all_nan": math.nan}], tmp_path / "one.png")
    _assert_png(path)


@pytest.mark.parametrize(
    "history",
    [[], [{"epoch": 1}], [{"epoch": 1, "phase": "warmup"}], [{"epoch": "one", "loss": 1.0}]],
)
def test_learning_curves_rejects_bad_history(tmp_path: Path, history: list[dict[str, object]]) -> None:
    with pytest.raises(ValueError, match=r"^history: "):
        learning_curves(history, tmp_path / "curves.png")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("dims", [1, 4])
def test_predicted_vs_true_writes_png(tmp_path: Path, dims: int) -> None:
    mean, target, std = _predictions(SAMPLES, dims)
    names = [f"y{index}" for index in range(dims)]
    path = tmp_path / "predicted_vs_true.png"
    assert predicted_vs_true(mean, target, std, names, path) == path
    _assert_png(path)


def test_predicted_vs_true_single_constant_sample(tmp_path: Path) -> None:
    """One sample with equal true and predicted values and zero std: degenerate limits, no warning."""
    ones = np.ones((1, 2))
    path = predicted_vs_true(ones, ones, np.zeros((1, 2)), ["a", "b"], tmp_path / "single.png")
    _assert_png(path)


def test_predicted_vs_true_subsamples_deterministically(tmp_path: Path) -> None:
    mean, target, std = _predictions(MAX_POINTS + 1000, 1)
    first = predicted_vs_true(mean, target, std, ["a"], tmp_path / "first" / "plot.png")
    second = predicted_vs_true(mean, target, std, ["a"], tmp_path / "second" / "plot.png")
    _assert_png(first)
    assert first.read_bytes() == second.read_bytes()


def test_calibration_curve_writes_png(tmp_path: Path) -> None:
    levels = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    coverage = np.clip(levels + np.array([0.02, -0.01, 0.03, 0.0, -0.02, 0.01, 0.0]), 0.0, 1.0)
    path = tmp_path / "calibration.png"
    assert calibration_curve(levels, coverage, path) == path
    _assert_png(path)


def test_covariance_ellipses_writes_png(tmp_path: Path) -> None:
    target, mean, covariance = _ellipse_inputs(SAMPLES)
    path = tmp_path / "ellipses.png"
    assert covariance_ellipses(target, mean, covariance, path) == path
    _assert_png(path)


@pytest.mark.parametrize(
    ("with_true_mean", "with_true_covariance"), [(True, True), (True, False), (False, True)]
)
def test_covariance_ellipses_with_truth_writes_png(
    tmp_path: Path, with_true_mean: bool, with_true_covariance: bool
) -> None:
    target, mean, covariance = _ellipse_inputs(SAMPLES)
    path = covariance_ellipses(
        target,
        mean,
        covariance,
        tmp_path / "ellipses.png",
        true_mean=mean + 0.1 if with_true_mean else None,
        true_covariance=_covariances(SAMPLES, seed=1) if with_true_covariance else None,
        target_names=("first", "second"),
        level=0.5,
    )
    _assert_png(path)


def test_failed_write_leaves_destination_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "calibration.png"
    path.write_bytes(b"previous")

    def failing_savefig(self: Figure, handle: IO[bytes], **kwargs: object) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        calibration_curve(np.array([0.5]), np.array([0.5]), path)
    assert path.read_bytes() == b"previous"
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]


def _valid_predictions() -> dict[str, object]:
    mean, target, std = _predictions(10, 2)
    return {"mean": mean, "target": target, "std": std, "target_names": ["a", "b"]}


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("mean", np.zeros(10)),
        ("mean", np.zeros((0, 2))),
        ("target", np.zeros((10, 3))),
        ("target", np.zeros((9, 2))),
        ("target", np.full((10, 2), np.nan)),
        ("std", np.zeros((10, 2, 1))),
        ("std", -np.ones((10, 2))),
        ("target_names", ["a"]),
        ("target_names", "ab"),
    ],
)
def test_predicted_vs_true_rejects_bad_argument(tmp_path: Path, argument: str, value: object) -> None:
    arguments = _valid_predictions() | {argument: value}
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        predicted_vs_true(path=tmp_path / "plot.png", **arguments)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argument", "levels", "coverage"),
    [
        ("levels", np.zeros((2, 2)), np.zeros(4)),
        ("levels", np.array([]), np.array([])),
        ("levels", np.array([0.5, 1.5]), np.array([0.5, 0.9])),
        ("coverage", np.array([0.5, 0.9]), np.array([0.5, 0.9, 0.95])),
        ("coverage", np.array([0.5, 0.9]), np.array([0.5, -0.1])),
        ("coverage", np.array([0.5, 0.9]), np.array([0.5, np.inf])),
    ],
)
def test_calibration_curve_rejects_bad_argument(
    tmp_path: Path, argument: str, levels: FloatArray, coverage: FloatArray
) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        calibration_curve(levels, coverage, tmp_path / "calibration.png")


def _valid_ellipse_arguments() -> dict[str, object]:
    target, mean, covariance = _ellipse_inputs(10)
    return {"target": target, "mean": mean, "covariance": covariance}


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("target", np.zeros((10, 3))),
        ("target", np.zeros((10, 1))),
        ("mean", np.zeros((10, 3))),
        ("mean", np.zeros((11, 2))),
        ("covariance", np.tile(np.eye(3), (10, 1, 1))),
        ("covariance", np.tile([[1.0, 2.0], [0.0, 1.0]], (10, 1, 1))),
        ("covariance", np.tile([[1.0, 2.0], [2.0, 1.0]], (10, 1, 1))),
        ("true_mean", np.zeros((10, 1))),
        ("true_covariance", np.zeros((9, 2, 2))),
        ("true_covariance", -np.tile(np.eye(2), (10, 1, 1))),
        ("target_names", ("only",)),
        ("level", 1.0),
        ("level", 0.0),
    ],
)
def test_covariance_ellipses_rejects_bad_argument(tmp_path: Path, argument: str, value: object) -> None:
    arguments = _valid_ellipse_arguments() | {argument: value}
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        covariance_ellipses(path=tmp_path / "ellipses.png", **arguments)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_covariance_ellipses_rejects_three_dimensional_targets(tmp_path: Path) -> None:
    mean, target, _ = _predictions(10, 3)
    with pytest.raises(ValueError, match=r"^target: covariance ellipses need D = 2"):
        covariance_ellipses(target, mean, np.tile(np.eye(3), (10, 1, 1)), tmp_path / "ellipses.png")


def _rotation(degrees: float) -> FloatArray:
    radians = math.radians(degrees)
    return np.array([[math.cos(radians), -math.sin(radians)], [math.sin(radians), math.cos(radians)]])


@pytest.mark.parametrize("level", [0.5, LEVEL, 0.99])
def test_ellipse_parameters_hand_computed(level: float) -> None:
    """diag(4, 1), rotated by 0, 45 and 135 degrees: axes 2 sqrt(4 q) and 2 sqrt(q) along the rotation."""
    quantile = float(stats.chi2.ppf(level, df=2))
    angles = [0.0, 45.0, 135.0]
    base = np.diag([4.0, 1.0])
    covariance = np.stack([_rotation(angle) @ base @ _rotation(angle).T for angle in angles])
    np.testing.assert_allclose(covariance[1], [[2.5, 1.5], [1.5, 2.5]], rtol=EXACT_RTOL)
    width, height, angle_degrees = ellipse_parameters(covariance, level)
    np.testing.assert_allclose(width, np.full(3, 2.0 * math.sqrt(4.0 * quantile)), rtol=EXACT_RTOL)
    np.testing.assert_allclose(height, np.full(3, 2.0 * math.sqrt(quantile)), rtol=EXACT_RTOL)
    np.testing.assert_allclose(angle_degrees, angles, rtol=0.0, atol=1e-9)


def test_ellipse_parameters_axis_aligned_major_along_second_axis() -> None:
    width, height, angle_degrees = ellipse_parameters(np.array([[[1.0, 0.0], [0.0, 9.0]]]), LEVEL)
    quantile = float(stats.chi2.ppf(LEVEL, df=2))
    np.testing.assert_allclose(width, [6.0 * math.sqrt(quantile)], rtol=EXACT_RTOL)
    np.testing.assert_allclose(height, [2.0 * math.sqrt(quantile)], rtol=EXACT_RTOL)
    np.testing.assert_allclose(angle_degrees, [90.0], rtol=EXACT_RTOL)


def test_matplotlib_ellipse_boundary_has_mahalanobis_radius_of_the_level() -> None:
    """The ``Ellipse`` patches built from the parameters trace ``x^T S^-1 x = chi2.ppf(level, 2)``.

    This checks the parameters against matplotlib's own convention (full axes, counter-clockwise degrees),
    which the plots rely on. The outline's Bezier segment ends (every 45 degrees of the unit circle, axis
    ends included) lie exactly on the ellipse; the control points between them do not and are skipped.
    """
    covariance = _covariances(50, seed=3)
    width, height, angle_degrees = ellipse_parameters(covariance, LEVEL)
    assert np.all((angle_degrees >= 0.0) & (angle_degrees < 180.0))
    assert np.all(width >= height)
    precision = np.linalg.inv(covariance)
    quantile = float(stats.chi2.ppf(LEVEL, df=2))
    for index in range(covariance.shape[0]):
        patch = Ellipse((0.0, 0.0), width[index], height[index], angle=angle_degrees[index])
        path = patch.get_path()
        on_curve = [
            vertices[-2:] for vertices, code in path.iter_segments() if code != matplotlib.path.Path.CLOSEPOLY
        ]
        outline = patch.get_patch_transform().transform(np.array(on_curve))
        assert len(outline) >= ELLIPSE_SEGMENT_ENDS
        squared = np.einsum("ki,ij,kj->k", outline, precision[index], outline)
        np.testing.assert_allclose(squared, quantile, rtol=1e-9)


def test_ellipse_parameters_clips_tiny_negative_eigenvalue() -> None:
    singular = np.array([[[1.0, 1.0], [1.0, 1.0 - 1e-12]]])
    width, height, angle_degrees = ellipse_parameters(singular, LEVEL)
    assert height[0] == pytest.approx(0.0, abs=1e-5)
    assert width[0] == pytest.approx(2.0 * math.sqrt(2.0 * stats.chi2.ppf(LEVEL, df=2)), rel=1e-6)
    assert angle_degrees[0] == pytest.approx(45.0, abs=1e-5)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: ellipse_parameters(np.eye(2), LEVEL), "covariance"),
        (lambda: ellipse_parameters(np.zeros((1, 2, 3)), LEVEL), "covariance"),
        (lambda: ellipse_parameters(np.array([[[1.0, 0.5], [0.0, 1.0]]]), LEVEL), "covariance"),
        (lambda: ellipse_parameters(np.eye(2)[None], 1.5), "level"),
    ],
)
def test_ellipse_parameters_rejects_bad_argument(call: Callable[[], object], argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        call()


def test_learning_curves_marks_the_kept_epoch_under_a_title(tmp_path: Path) -> None:
    path = learning_curves(_history(), tmp_path / "curves.png", kept_epoch=2, title="run 1: 5 epochs")
    _assert_png(path)


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        ([0.52, 0.50, 0.47], "linear"),
        ([2.2, 2.1, 2.0], "linear"),
        ([1.0, 0.1, 0.001], "log"),
        ([-1.0, 5.0, 500.0], "linear"),
        ([1.0, 100.0], "linear"),
    ],
)
def test_y_scale_is_log_only_for_positive_values_spanning_decades(values: list[float], scale: str) -> None:
    assert y_scale(np.array(values)) == scale


@pytest.mark.parametrize(
    ("key", "title"),
    [("val_nll", "validation nll"), ("val_energy_score", "validation energy score"), ("odd_key", "odd key")],
)
def test_metric_title_reads_as_words(key: str, title: str) -> None:
    assert metric_title(key) == title


def _spd(samples: int, dims: int, seed: int) -> FloatArray:
    factor = np.random.default_rng(seed).normal(size=(samples, dims, dims))
    covariance: FloatArray = factor @ np.swapaxes(factor, -1, -2) + 0.1 * np.eye(dims)
    return covariance


def test_mean_correlation_equals_the_naive_loop() -> None:
    covariance = _spd(7, 4, seed=5)
    naive = np.zeros((4, 4))
    for sample in covariance:
        for row in range(4):
            for column in range(4):
                scale = math.sqrt(sample[row, row] * sample[column, column])
                naive[row, column] += sample[row, column] / scale
    np.testing.assert_allclose(mean_correlation(covariance), naive / 7, rtol=EXACT_RTOL)
    np.testing.assert_allclose(np.diagonal(mean_correlation(covariance)), 1.0, rtol=EXACT_RTOL)


def test_correlation_heatmap_writes_png_with_and_without_the_truth(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d"]
    alone = correlation_heatmap(_spd(30, 4, seed=1), names, tmp_path / "alone" / "c.png", title="test split")
    _assert_png(alone)
    both = correlation_heatmap(
        _spd(30, 4, seed=1), names, tmp_path / "both" / "c.png", true_covariance=_spd(30, 4, seed=2)
    )
    _assert_png(both)
    assert matplotlib.image.imread(both).shape[1] > matplotlib.image.imread(alone).shape[1]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda path: correlation_heatmap(np.zeros((3, 3, 3)), ["a", "b", "c"], path), "non-positive"),
        (lambda path: correlation_heatmap(_spd(3, 3, seed=0), ["a", "b"], path), "target_names"),
        (lambda path: correlation_heatmap(np.ones((3, 3)), ["a", "b", "c"], path), "covariance"),
    ],
)
def test_correlation_heatmap_rejects_bad_argument(
    call: Callable[[Path], object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()

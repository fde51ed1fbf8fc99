"""Diagnostic PNG plots of a training run: learning curves, predicted vs true, calibration, covariance.

Every plotting function takes NumPy arrays (or array-likes) and an output path, validates its inputs
(a bad shape, an empty array, a non-finite value or an out-of-range value raises ``ValueError`` whose
message starts with the argument's name), draws on a fresh ``matplotlib.figure.Figure`` rendered by
the Agg canvas and returns the destination path. The PNG is written atomically: the image goes to a
hidden temporary file in the destination directory, is flushed to disk and then moved over the
destination with ``os.replace``, so a reader never sees a partial image and a failed write leaves
neither a temporary file nor a changed destination. Missing parent directories are created.

``matplotlib.pyplot`` is never imported: no figure is registered with pyplot's global figure manager,
the global backend and ``rcParams`` are left untouched, and each figure is released with its last
reference when the function returns (there is no pyplot figure to close).

Shapes: ``N`` samples, ``D`` target dimensions, ``L`` nominal levels. Units: targets, predicted means
and predicted standard deviations are in target units; covariances in squared target units; levels and
coverages are probabilities in [0, 1]; ellipse widths and heights in target units; angles in degrees,
counter-clockwise from the first target axis.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeGuard

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse

from covserve.training.atomic import write_atomically
from covserve.training.numerics import FLOAT32_SYMMETRY_RTOL

__all__ = [
    "DPI",
    "MAX_ELLIPSES",
    "MAX_POINTS",
    "SUBSAMPLE_SEED",
    "calibration_curve",
    "correlation_heatmap",
    "covariance_ellipses",
    "ellipse_parameters",
    "learning_curves",
    "mean_correlation",
    "metric_title",
    "predicted_vs_true",
    "y_scale",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
StrPath = str | os.PathLike[str]
EllipseParameters = tuple[FloatArray, FloatArray, FloatArray]
"""Full major axis, full minor axis (target units) and angle (degrees) of N ellipses, each shape (N,)."""

DPI = 100
"""Resolution of every written PNG, in dots per inch."""

AXES_WIDTH = 3.6
"""Width of the plotting area of one subplot panel, in inches."""

AXES_HEIGHT = 3.2
"""Height of the plotting area of one subplot panel, in inches."""

MARGIN_LEFT = 0.9
"""Space left of the first column for y tick labels and the y label, in inches."""

MARGIN_RIGHT = 0.3
"""Space right of the last column, in inches."""

MARGIN_BOTTOM = 0.7
"""Space below the last row for x tick labels and the x label, in inches."""

MARGIN_TOP = 0.5
"""Space above the first row for the panel titles, in inches."""

GAP_WIDTH = 1.2
"""Space between two columns (a colour bar's labels, the next panel's y labels), in inches."""

GAP_HEIGHT = 1.1
"""Space between two rows (x labels, the next panel's title), in inches."""

SUPTITLE_HEIGHT = 0.45
"""Extra space above the panels for a figure title (the split a plot shows), in inches."""

LOG_SCALE_MIN_RATIO = 100.0
"""A learning-curve panel's y-axis is logarithmic only when its values are positive and span more than
this factor (largest over smallest); below it a linear axis reads better and keeps several ticks."""

METRIC_TITLES = {
    "train_loss": "training loss (the method's objective)",
    "lr": "learning rate",
    "seconds": "seconds per epoch",
    "label_seconds": "pseudo-label seconds per epoch",
}
"""Panel titles of the learning-curve keys other than ``val_<metric>`` (read "validation <metric>")."""

MAX_ANNOTATED_TARGETS = 12
"""Correlation heatmaps of at most this many targets print each cell's value."""

KEPT_COLOUR = "tab:green"
"""Colour of the line that marks the kept (exported) epoch."""

MAX_COLUMNS = 3
"""Most subplot panels per row of a grid."""

MAX_POINTS = 5000
"""Most samples drawn in one scatter panel; larger inputs are subsampled without replacement."""

SUBSAMPLE_SEED = 0
"""Seed of the subsampling generator, so the same inputs always give the same image."""

MAX_ELLIPSES = 30
"""Most samples, evenly spaced over the sample index, whose covariance ellipses are drawn."""

POINT_SIZE = 6.0
"""Area of a scatter marker, in points squared."""

POINT_ALPHA = 0.5
"""Opacity of scatter markers."""

ELLIPSE_LINE_WIDTH = 1.2
"""Line width of the drawn ellipses, in points."""

GRID_ALPHA = 0.3
"""Opacity of the background grid lines."""

LIMIT_PAD_FRACTION = 0.05
"""Margin added on each side of the predicted-vs-true axes, as a fraction of the data range."""

PSD_RTOL = 1e-6
"""Most negative accepted eigenvalue of a covariance, relative to its largest eigenvalue magnitude."""

HALF_TURN_DEGREES = 180.0
"""An ellipse is symmetric under a half turn, so its angle is reported in [0, 180) degrees."""

PREDICTED_COLOUR = "tab:blue"
"""Colour of the predicted means and ellipses."""

TRUE_COLOUR = "tab:red"
"""Colour of the true means and ellipses (synthetic data)."""

TARGET_COLOUR = "0.6"
"""Colour (a grey level) of the observed targets."""


def learning_curves(
    history: Sequence[Mapping[str, object]],
    path: StrPath,
    *,
    kept_epoch: float | None = None,
    title: str | None = None,
) -> Path:
    """Plot every numeric metric of a training history against the epoch, one panel per metric.

    Parameters
    ----------
    history : sequence of mappings, length E >= 1
        One record per epoch, e.g. ``{"epoch": 1, "train_loss": 0.3, "val_nll": 0.5, "lr": 1e-3}``.
        ``"epoch"`` (a number) gives the x coordinate; a record without it is taken as epoch
        ``index + 1``. Every other key whose values are all real numbers (``bool`` excluded) gets a
        panel, in order of first appearance; a key that is absent or ``None`` in a record, or whose
        value there is not finite, is simply not drawn at that epoch. Keys with any other value (a
        string, say) are skipped. A panel's y-axis is linear unless its drawn values are positive and
        span more than ``LOG_SCALE_MIN_RATIO``. ``val_<metric>`` panels are titled "validation
        <metric>", the others by ``METRIC_TITLES``.
    path : path-like
        Destination PNG file.
    kept_epoch : float, optional
        The epoch whose weights were kept (exported), marked by a vertical line in every panel.
    title : str, optional
        Figure title above the panels.

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    ValueError
        ``history`` is empty, has a non-numeric ``"epoch"``, or holds no numeric metric.
    """
    records = list(history)
    if not records:
        raise ValueError("history: needs at least one epoch record, got none")
    epochs = np.array([_epoch_of(index, record) for index, record in enumerate(records)], dtype=np.float64)
    keys = _numeric_keys(records)
    if not keys:
        raise ValueError("history: holds no numeric metric besides 'epoch' to plot")

    rows, columns = _grid(len(keys))
    figure = _new_figure(rows, columns, title)
    for panel, key in enumerate(keys, start=1):
        axes = figure.add_subplot(rows, columns, panel)
        values = np.array([_metric_value(record.get(key)) for record in records], dtype=np.float64)
        drawn = np.isfinite(values)
        if drawn.any():
            axes.plot(epochs[drawn], values[drawn], marker=".", color=PREDICTED_COLOUR)
            axes.set_yscale(y_scale(values[drawn]))
        else:
            axes.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=axes.transAxes)
        if kept_epoch is not None:
            axes.axvline(kept_epoch, color=KEPT_COLOUR, linestyle=":", label=f"kept: epoch {kept_epoch:g}")
            if panel == 1:
                axes.legend(loc="best", fontsize="small")
        axes.set_title(metric_title(key))
        axes.set_xlabel("epoch")
        axes.grid(alpha=GRID_ALPHA)
    return _save_atomically(figure, path)


def metric_title(key: str) -> str:
    """The panel title of a learning-curve key: ``val_nll`` reads "validation nll"."""
    if key.startswith("val_"):
        return f"validation {key.removeprefix('val_').replace('_', ' ')}"
    return METRIC_TITLES.get(key, key.replace("_", " "))


def y_scale(values: FloatArray) -> str:
    """``"log"`` when the finite ``values`` (shape (E,)) are positive and span more than
    ``LOG_SCALE_MIN_RATIO``, else ``"linear"``: a loss falling 0.52 → 0.47 reads best on a linear axis."""
    wide = np.all(values > 0.0) and values.max() > LOG_SCALE_MIN_RATIO * values.min()
    return "log" if wide else "linear"


def predicted_vs_true(
    mean: npt.ArrayLike,
    target: npt.ArrayLike,
    std: npt.ArrayLike,
    target_names: Sequence[str],
    path: StrPath,
    *,
    title: str | None = None,
) -> Path:
    """Scatter predicted against true values, one panel per target, coloured by the predicted std.

    Each panel shows the identity line and, in its title, the root-mean-square error over all N
    samples. At most ``MAX_POINTS`` samples (the same ones in every panel, chosen with
    ``SUBSAMPLE_SEED``) are drawn.

    Parameters
    ----------
    mean : array, shape (N, D)
        Predicted means, in target units.
    target : array, shape (N, D)
        Observed targets, in target units.
    std : array, shape (N, D)
        Predicted marginal standard deviations (square roots of the covariance diagonals), in target
        units; non-negative.
    target_names : sequence of str, length D
        Panel titles.
    path : path-like
        Destination PNG file.
    title : str, optional
        Figure title above the panels (e.g. the split shown).

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    ValueError
        An array has the wrong shape, is empty or holds a non-finite value; ``std`` is negative;
        ``target_names`` does not hold D strings.
    """
    dims: dict[str, int] = {}
    mean_array = _float_array("mean", mean, ("N", "D"), dims)
    target_array = _float_array("target", target, ("N", "D"), dims)
    std_array = _float_array("std", std, ("N", "D"), dims)
    if np.any(std_array < 0.0):
        raise ValueError(f"std: must be non-negative, got minimum {std_array.min()}")
    names = _names("target_names", target_names, dims["D"])

    rmse = np.sqrt(np.mean((mean_array - target_array) ** 2, axis=0))
    shown = _subsample(dims["N"], MAX_POINTS)
    rows, columns = _grid(dims["D"])
    figure = _new_figure(rows, columns, title)
    for column, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, column + 1)
        true_values = target_array[shown, column]
        predicted = mean_array[shown, column]
        points = axes.scatter(
            true_values,
            predicted,
            c=std_array[shown, column],
            cmap="viridis",
            s=POINT_SIZE,
            alpha=POINT_ALPHA,
            linewidths=0.0,
        )
        low, high = _padded_range(np.concatenate([true_values, predicted]))
        axes.plot([low, high], [low, high], color="black", linestyle="--", linewidth=1.0)
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        axes.set_aspect("equal")
        axes.set_title(f"{name} (RMSE {rmse[column]:.3g})")
        axes.set_xlabel("true")
        axes.set_ylabel("predicted mean")
        axes.grid(alpha=GRID_ALPHA)
        figure.colorbar(points, ax=axes, label="predicted std")
    return _save_atomically(figure, path)


def calibration_curve(
    levels: npt.ArrayLike, coverage: npt.ArrayLike, path: StrPath, *, title: str | None = None
) -> Path:
    """Plot the empirical coverage of the Mahalanobis (chi-square) ellipsoids against their nominal level.

    The identity line is the ideal; the title gives the mean absolute calibration error
    ``mean(|coverage - level|)``.

    Parameters
    ----------
    levels : array, shape (L,)
        Nominal probability mass of each central ellipsoid, in [0, 1].
    coverage : array, shape (L,)
        Fraction of samples whose target falls inside the ellipsoid of each level, in [0, 1].
    path : path-like
        Destination PNG file.
    title : str, optional
        Figure title above the panel (e.g. the split shown).

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    ValueError
        An array has the wrong shape, is empty, or holds a value that is not finite or outside [0, 1].
    """
    dims: dict[str, int] = {}
    level_array = _float_array("levels", levels, ("L",), dims)
    coverage_array = _float_array("coverage", coverage, ("L",), dims)
    for name, values in (("levels", level_array), ("coverage", coverage_array)):
        if np.any((values < 0.0) | (values > 1.0)):
            raise ValueError(f"{name}: must lie in [0, 1], got range [{values.min()}, {values.max()}]")

    order = np.argsort(level_array, kind="stable")
    error = float(np.mean(np.abs(coverage_array - level_array)))
    figure = _new_figure(1, 1, title)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0.0, 1.0], [0.0, 1.0], color="black", linestyle="--", linewidth=1.0, label="ideal")
    axes.plot(level_array[order], coverage_array[order], marker="o", color=PREDICTED_COLOUR, label="observed")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_aspect("equal")
    axes.set_title(f"Calibration (mean abs. error {error:.3f})")
    axes.set_xlabel("nominal level")
    axes.set_ylabel("empirical coverage")
    axes.grid(alpha=GRID_ALPHA)
    axes.legend(loc="upper left")
    return _save_atomically(figure, path)


def covariance_ellipses(
    target: npt.ArrayLike,
    mean: npt.ArrayLike,
    covariance: npt.ArrayLike,
    path: StrPath,
    *,
    true_mean: npt.ArrayLike | None = None,
    true_covariance: npt.ArrayLike | None = None,
    target_names: Sequence[str] = ("y0", "y1"),
    level: float = 0.9,
    title: str | None = None,
) -> Path:
    """Scatter 2-D targets and draw the predicted covariance ellipses of up to ``MAX_ELLIPSES`` samples.

    The samples are evenly spaced over the sample index. Each predicted ellipse is the central region of
    probability ``level`` of the predicted Gaussian, centred at the predicted mean (marked). With
    ``true_mean`` the true means of those samples are marked too; with ``true_covariance`` the true
    ellipses are drawn dashed in another colour, centred at ``true_mean`` when given, otherwise at the
    predicted mean (a comparison of shape alone). At most ``MAX_POINTS`` targets are scattered.

    Parameters
    ----------
    target : array, shape (N, 2)
        Observed targets, in target units.
    mean : array, shape (N, 2)
        Predicted means, in target units.
    covariance : array, shape (N, 2, 2)
        Predicted covariances, symmetric positive semi-definite, in squared target units.
    path : path-like
        Destination PNG file.
    true_mean : array, shape (N, 2), optional
        True conditional means (synthetic data), in target units.
    true_covariance : array, shape (N, 2, 2), optional
        True conditional covariances (synthetic data), in squared target units.
    target_names : sequence of str, length 2
        Axis labels.
    level : float
        Probability mass inside each ellipse, in (0, 1).
    title : str, optional
        Figure title above the panel (e.g. the split shown).

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    ValueError
        ``target`` does not have D = 2 columns; another array has the wrong shape, is empty or holds a
        non-finite value; a covariance is not symmetric positive semi-definite; ``level`` is not in
        (0, 1); ``target_names`` does not hold 2 strings.
    """
    dims: dict[str, int] = {}
    target_array = _float_array("target", target, ("N", "D"), dims)
    if dims["D"] != 2:
        raise ValueError(f"target: covariance ellipses need D = 2 target dimensions, got D = {dims['D']}")
    mean_array = _float_array("mean", mean, ("N", "D"), dims)
    predicted = _ellipses("covariance", _float_array("covariance", covariance, ("N", "D", "D"), dims), level)
    true_mean_array = None if true_mean is None else _float_array("true_mean", true_mean, ("N", "D"), dims)
    true = (
        None
        if true_covariance is None
        else _ellipses(
            "true_covariance", _float_array("true_covariance", true_covariance, ("N", "D", "D"), dims), level
        )
    )
    names = _names("target_names", target_names, dims["D"])

    chosen = _evenly_spaced(dims["N"], MAX_ELLIPSES)
    shown = _subsample(dims["N"], MAX_POINTS)
    figure = _new_figure(1, 1, title)
    axes = figure.add_subplot(1, 1, 1)
    axes.scatter(
        target_array[shown, 0],
        target_array[shown, 1],
        s=POINT_SIZE,
        alpha=POINT_ALPHA,
        color=TARGET_COLOUR,
        linewidths=0.0,
    )
    handles = [
        Line2D([], [], linestyle="", marker="o", color=TARGET_COLOUR, label="targets"),
        Line2D([], [], linestyle="", marker="+", color=PREDICTED_COLOUR, label="predicted mean"),
        Line2D([], [], color=PREDICTED_COLOUR, label=f"predicted {level:.0%} ellipse"),
    ]
    _draw_ellipses(axes, mean_array, predicted, chosen, PREDICTED_COLOUR, "-")
    axes.scatter(mean_array[chosen, 0], mean_array[chosen, 1], marker="+", color=PREDICTED_COLOUR)
    if true_mean_array is not None:
        axes.scatter(true_mean_array[chosen, 0], true_mean_array[chosen, 1], marker="x", color=TRUE_COLOUR)
        handles.append(Line2D([], [], linestyle="", marker="x", color=TRUE_COLOUR, label="true mean"))
    if true is not None:
        centres = mean_array if true_mean_array is None else true_mean_array
        _draw_ellipses(axes, centres, true, chosen, TRUE_COLOUR, "--")
        handles.append(Line2D([], [], color=TRUE_COLOUR, linestyle="--", label=f"true {level:.0%} ellipse"))
    axes.set_title(f"Covariance ellipses ({chosen.size} of {dims['N']} samples)")
    axes.set_xlabel(names[0])
    axes.set_ylabel(names[1])
    axes.grid(alpha=GRID_ALPHA)
    axes.legend(handles=handles, loc="best", fontsize="small")
    return _save_atomically(figure, path)


def correlation_heatmap(
    covariance: npt.ArrayLike,
    target_names: Sequence[str],
    path: StrPath,
    *,
    true_covariance: npt.ArrayLike | None = None,
    title: str | None = None,
) -> Path:
    """Heatmap of the predicted correlations between targets, averaged over the samples (for D > 2 targets,
    where pairwise ellipses no longer fit one panel), with the true correlations beside it when known.

    Parameters
    ----------
    covariance : array, shape (N, D, D)
        Predicted covariances with positive diagonals, in squared target units.
    target_names : sequence of str, length D
        Row and column labels.
    path : path-like
        Destination PNG file.
    true_covariance : array, shape (N, D, D), optional
        True covariances (synthetic data), drawn as a second panel.
    title : str, optional
        Figure title above the panels (e.g. the split shown).

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    ValueError
        An array has the wrong shape, is empty, holds a non-finite value or a non-positive variance;
        ``target_names`` does not hold D strings.
    """
    dims: dict[str, int] = {}
    panels = [("predicted", mean_correlation(_float_array("covariance", covariance, ("N", "D", "D"), dims)))]
    if true_covariance is not None:
        true = _float_array("true_covariance", true_covariance, ("N", "D", "D"), dims)
        panels.append(("true", mean_correlation(true, "true_covariance")))
    names = _names("target_names", target_names, dims["D"])
    figure = _new_figure(1, len(panels), title)
    for panel, (label, correlation) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), panel)
        image = axes.imshow(correlation, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        if dims["D"] <= MAX_ANNOTATED_TARGETS:
            for (row, column), value in np.ndenumerate(correlation):
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize="small")
        axes.set_xticks(range(dims["D"]), names, rotation=90)
        axes.set_yticks(range(dims["D"]), names)
        axes.set_title(f"{label} correlation (mean of {dims['N']})")
        figure.colorbar(image, ax=axes)
    return _save_atomically(figure, path)


def mean_correlation(covariance: FloatArray, name: str = "covariance") -> FloatArray:
    """The mean over samples of ``Σ_ij / sqrt(Σ_ii Σ_jj)``, shape (D, D), from covariances (N, D, D).

    ``ValueError`` naming ``name`` when a diagonal entry is not positive.
    """
    variances = np.diagonal(covariance, axis1=-2, axis2=-1)
    if np.any(variances <= 0.0):
        row = int(np.flatnonzero(np.any(variances <= 0.0, axis=-1))[0])
        raise ValueError(f"{name}: sample {row} has a non-positive variance")
    std = np.sqrt(variances)
    correlation: FloatArray = np.mean(covariance / (std[:, :, None] * std[:, None, :]), axis=0)
    return correlation


def ellipse_parameters(covariance: npt.ArrayLike, level: float) -> EllipseParameters:
    """Full axes and orientation of the central ``level`` region of each 2-D Gaussian.

    The region ``{x : x^T S^{-1} x <= q}`` with ``q = chi2.ppf(level, df=2) = -2 log(1 - level)`` is an
    ellipse whose semi-axes are ``sqrt(q * lambda)`` along the eigenvectors of ``S`` (from
    ``numpy.linalg.eigh``). The values match the arguments of ``matplotlib.patches.Ellipse``.

    Parameters
    ----------
    covariance : array, shape (N, 2, 2)
        Symmetric positive semi-definite covariances, in squared target units. Asymmetry up to
        ``FLOAT32_SYMMETRY_RTOL`` is averaged away; eigenvalues down to ``-PSD_RTOL`` times the largest
        eigenvalue magnitude are clipped to zero.
    level : float
        Probability mass inside each ellipse, in (0, 1).

    Returns
    -------
    width : ndarray, shape (N,)
        Full length of the major axis, ``2 sqrt(q * lambda_max)``, in target units.
    height : ndarray, shape (N,)
        Full length of the minor axis, ``2 sqrt(q * lambda_min)``, in target units.
    angle_degrees : ndarray, shape (N,)
        Counter-clockwise angle from the first target axis to the major axis, in [0, 180) degrees.

    Raises
    ------
    ValueError
        ``covariance`` has the wrong shape, is empty, holds a non-finite value, or is not symmetric
        positive semi-definite; ``level`` is not in (0, 1).
    """
    return _ellipses("covariance", _float_array("covariance", covariance, ("N", 2, 2), {}), level)


def _ellipses(name: str, covariance: FloatArray, level: float) -> EllipseParameters:
    """``ellipse_parameters`` of an already shape-checked (N, 2, 2) array; errors name ``name``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    quantile = -2.0 * math.log1p(-level)
    transposed = np.swapaxes(covariance, -1, -2)
    scale = np.max(np.abs(covariance), axis=(-2, -1))
    asymmetry = np.max(np.abs(covariance - transposed), axis=(-2, -1))
    asymmetric = np.flatnonzero(asymmetry > FLOAT32_SYMMETRY_RTOL * scale)
    if asymmetric.size:
        raise ValueError(f"{name}: sample {asymmetric[0]} is not symmetric")
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (covariance + transposed))
    indefinite = np.flatnonzero(eigenvalues[:, 0] < -PSD_RTOL * np.abs(eigenvalues).max(axis=-1))
    if indefinite.size:
        raise ValueError(f"{name}: sample {indefinite[0]} is not positive semi-definite")
    semi_axes = np.sqrt(quantile * np.clip(eigenvalues, 0.0, None))
    major_axis = eigenvectors[:, :, 1]
    angle = np.mod(np.degrees(np.arctan2(major_axis[:, 1], major_axis[:, 0])), HALF_TURN_DEGREES)
    # A tiny negative angle wraps to exactly 180.0 in floating point; fold it back onto 0.
    angle = np.where(angle >= HALF_TURN_DEGREES, angle - HALF_TURN_DEGREES, angle)
    return 2.0 * semi_axes[:, 1], 2.0 * semi_axes[:, 0], angle


def _draw_ellipses(
    axes: Axes,
    centres: FloatArray,
    parameters: EllipseParameters,
    chosen: IntArray,
    colour: str,
    linestyle: str,
) -> None:
    """Add unfilled ellipses for the ``chosen`` samples: ``centres`` (N, 2), ``parameters`` of length N."""
    width, height, angle = (part[chosen] for part in parameters)
    for (x, y), major, minor, degrees in zip(centres[chosen], width, height, angle, strict=True):
        axes.add_patch(
            Ellipse(
                (float(x), float(y)),
                float(major),
                float(minor),
                angle=float(degrees),
                fill=False,
                edgecolor=colour,
                linestyle=linestyle,
                linewidth=ELLIPSE_LINE_WIDTH,
            )
        )


def _float_array(
    name: str, value: npt.ArrayLike, shape: tuple[int | str, ...], dims: dict[str, int]
) -> FloatArray:
    """``value`` as a non-empty, finite float64 array of ``shape``.

    Integers in ``shape`` are fixed sizes; strings are symbolic sizes bound in ``dims`` by the first
    array that uses them and checked against every later one.
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: cannot be read as a float array ({error})") from error
    symbols = "(" + ", ".join(str(size) for size in shape) + ")"
    expected = tuple(size if isinstance(size, int) else dims.get(size) for size in shape)
    if array.ndim != len(shape) or any(
        size is not None and size != actual for size, actual in zip(expected, array.shape, strict=True)
    ):
        bound = "(" + ", ".join("?" if size is None else str(size) for size in expected) + ")"
        raise ValueError(f"{name}: expected shape {symbols} = {bound}, got {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: is empty, shape {array.shape}")
    non_finite = np.argwhere(~np.isfinite(array))
    if non_finite.size:
        raise ValueError(f"{name}: non-finite value at index {tuple(int(i) for i in non_finite[0])}")
    for size, actual in zip(shape, array.shape, strict=True):
        if isinstance(size, str):
            dims.setdefault(size, actual)
    return array


def _names(name: str, names: Sequence[str], count: int) -> tuple[str, ...]:
    """``names`` as a tuple, checked to hold exactly ``count`` strings."""
    if isinstance(names, str) or len(names) != count or not all(isinstance(item, str) for item in names):
        raise ValueError(f"{name}: expected {count} strings, got {names!r}")
    return tuple(names)


def _epoch_of(index: int, record: Mapping[str, object]) -> float:
    """The epoch of ``history[index]``: its ``"epoch"`` value, or ``index + 1`` when it has none."""
    if "epoch" not in record:
        return float(index + 1)
    epoch = record["epoch"]
    if not _is_number(epoch):
        raise ValueError(f"history: record {index} has a non-numeric 'epoch' {epoch!r}")
    return float(epoch)


def _numeric_keys(records: Sequence[Mapping[str, object]]) -> list[str]:
    """Keys other than ``"epoch"``, in order of first appearance, whose values are all numbers or ``None``."""
    keys: dict[str, bool] = {}
    for record in records:
        for key, value in record.items():
            if key != "epoch":
                keys[key] = keys.get(key, True) and (value is None or _is_number(value))
    return [key for key, numeric in keys.items() if numeric]


def _metric_value(value: object) -> float:
    """A numeric key's value at one epoch, NaN where the record lacks it (absent or ``None``)."""
    return float(value) if _is_number(value) else math.nan


def _is_number(value: object) -> TypeGuard[numbers.Real]:
    """Whether ``value`` is a real number (Python or NumPy), booleans excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _subsample(count: int, limit: int) -> IntArray:
    """Sorted indices of at most ``limit`` of ``count`` samples, drawn with ``SUBSAMPLE_SEED``."""
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    generator = np.random.default_rng(SUBSAMPLE_SEED)
    return np.sort(generator.choice(count, size=limit, replace=False)).astype(np.int64)


def _evenly_spaced(count: int, limit: int) -> IntArray:
    """Indices of at most ``limit`` of ``count`` samples, evenly spaced from the first to the last."""
    return np.unique(np.round(np.linspace(0, count - 1, num=min(count, limit))).astype(np.int64))


def _padded_range(values: FloatArray) -> tuple[float, float]:
    """The range of ``values`` widened by ``LIMIT_PAD_FRACTION`` on each side (never of zero width)."""
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else max(abs(low), 1.0)
    return low - LIMIT_PAD_FRACTION * span, high + LIMIT_PAD_FRACTION * span


def _grid(panels: int) -> tuple[int, int]:
    """Rows and columns of a grid for ``panels`` subplots, at most ``MAX_COLUMNS`` per row."""
    columns = min(panels, MAX_COLUMNS)
    return math.ceil(panels / columns), columns


def _new_figure(rows: int, columns: int, title: str | None = None) -> Figure:
    """A figure for a ``rows`` x ``columns`` grid of panels, with its own Agg canvas (no pyplot), and
    ``title`` above the panels when given.

    The margins and gaps are fixed in inches rather than computed by a layout engine: a constrained or
    tight layout measures every text element in extra passes and doubles the rendering time.
    """
    width = MARGIN_LEFT + columns * AXES_WIDTH + (columns - 1) * GAP_WIDTH + MARGIN_RIGHT
    top = MARGIN_TOP + (SUPTITLE_HEIGHT if title else 0.0)
    height = MARGIN_BOTTOM + rows * AXES_HEIGHT + (rows - 1) * GAP_HEIGHT + top
    figure = Figure(figsize=(width, height), dpi=DPI, layout=None)
    if title:
        figure.suptitle(title, y=1.0 - (SUPTITLE_HEIGHT / 3) / height, va="top")
    figure.subplots_adjust(
        left=MARGIN_LEFT / width,
        right=1.0 - MARGIN_RIGHT / width,
        bottom=MARGIN_BOTTOM / height,
        top=1.0 - top / height,
        wspace=GAP_WIDTH / AXES_WIDTH,
        hspace=GAP_HEIGHT / AXES_HEIGHT,
    )
    FigureCanvasAgg(figure)
    return figure


def _save_atomically(figure: Figure, path: StrPath) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically; return ``path``."""
    return write_atomically(Path(path), lambda handle: figure.savefig(handle, format="png", dpi=DPI))

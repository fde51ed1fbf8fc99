"""The generated data sets ``synthetic`` and ``sinusoid``, with their true mean and covariance kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from covserve.training.data._config import DataConfig
from covserve.training.data._table import Table
from covserve.training.errors import UsageError

if TYPE_CHECKING:
    from covserve.training.synthetic import SyntheticDataset

__all__ = ["BUILTIN_NAMES", "SINUSOID", "SYNTHETIC", "load_builtin"]

SYNTHETIC: Final = "synthetic"
"""TIC-TAC's multivariate data set, :func:`covserve.training.synthetic.multivariate`."""

SINUSOID: Final = "sinusoid"
"""The univariate sinusoid with the ``varying`` amplitude, :func:`covserve.training.synthetic.sinusoid`."""

BUILTIN_NAMES: Final = (SYNTHETIC, SINUSOID)

INPUT_PREFIX: Final = "x"
TARGET_PREFIX: Final = "y"


def load_builtin(config: DataConfig) -> tuple[Table, list[str]]:
    """Generate ``config.data`` (``"synthetic"`` or ``"sinusoid"``) from ``config.seed``.

    Parameters
    ----------
    config : DataConfig
        ``synthetic`` uses ``in_dim``, ``out_dim``, ``samples`` and ``seed``; ``sinusoid`` uses ``samples``
        and ``seed``.

    Returns
    -------
    (Table, list[str])
        Inputs (N, M) named ``x0, x1, ...``, targets (N, D) named ``y0, y1, ...``, the true mean (N, D) and
        covariance (N, D, D); and a description line.

    Raises
    ------
    UsageError
        If a column option (``--inputs``, ``--targets``, ``--exclude``, ``--missing-value``) is given: they
        apply only to files.
    """
    given = [
        option
        for option, value in (
            ("--inputs", config.inputs),
            ("--targets", config.targets),
            ("--exclude", config.exclude or None),
            ("--missing-value", config.missing_value),
        )
        if value is not None
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} apply only to files and uci: data sets, not to the built-in {config.data!r}"
        )
    # The generators need scipy.stats (about a second to import): loaded only when data is generated.
    from covserve.training.synthetic import SinusoidAmplitude, multivariate, sinusoid

    if config.data == SYNTHETIC:
        data = multivariate(config.in_dim, config.out_dim, config.samples, seed=config.seed)
        line = (
            f"generated synthetic: covserve.training.synthetic.multivariate(in_dim={config.in_dim}, "
            f"out_dim={config.out_dim}, samples={config.samples}, seed={config.seed})"
        )
    else:
        data = sinusoid(config.samples, SinusoidAmplitude.VARYING, seed=config.seed)
        line = (
            f"generated sinusoid: covserve.training.synthetic.sinusoid(samples={config.samples}, "
            f"amplitude='{SinusoidAmplitude.VARYING.value}', seed={config.seed})"
        )
    return _table(data), [line + "; the true mean and covariance are kept"]


def _table(data: SyntheticDataset) -> Table:
    """A :class:`Table` of a generated data set, truth included."""
    return Table(
        inputs=data.inputs,
        targets=data.targets,
        input_names=tuple(f"{INPUT_PREFIX}{index}" for index in range(data.inputs.shape[1])),
        target_names=tuple(f"{TARGET_PREFIX}{index}" for index in range(data.targets.shape[1])),
        true_mean=data.mean,
        true_covariance=data.covariance,
    )

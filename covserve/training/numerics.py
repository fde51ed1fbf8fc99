"""Every numerical knob of the covariance core, in one place, with a name and a reason.

All values are in *standardised target units*: the trainer standardises targets to unit variance before
any network sees them, so a floor of ``1e-3`` on a factor diagonal means a standard deviation of at least
one thousandth of the target's spread.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CONSTANT_COLUMN_RTOL",
    "DIAGONAL_FLOOR",
    "FLOAT32_SYMMETRY_RTOL",
    "INPUT_METRIC_RIDGE",
    "LOCAL_LINEAR_DOF_FLOOR",
    "LOCAL_LINEAR_RIDGE",
    "MAX_ABS_DATA_VALUE",
    "MAX_TARGET_STANDARD_DEVIATION",
    "MIN_STANDARD_DEVIATION",
    "PSEUDO_LABEL_JITTER",
    "RAW_OUTPUT_BOUND",
    "RELATIVE_RIDGE",
    "TARGET_RANK_TOLERANCE",
    "constant_columns",
]

RAW_OUTPUT_BOUND: Final = 50.0
"""Raw network outputs pass through ``b * tanh(raw / b)`` before they become factor entries.

The map is the identity to within 0.2 % for ``|raw| < b / 10`` and saturates at ``±b``, so an exploding
network (outputs of ``±1e4`` and beyond) yields a large but finite factor instead of ``inf`` entries whose
products overflow to ``inf - inf = NaN``."""

DIAGONAL_FLOOR: Final = 1e-3
"""Added to every softplus-activated factor diagonal (Cholesky, square-root and diagonal
parameterisations): factors stay invertible and ``log det`` stays finite however negative the raw
output is."""

RELATIVE_RIDGE: Final = 1e-3
"""Isotropic ridge added to every assembled covariance (or square root): ``ε · tr(G) / D`` plus the floor.

Scaling ``ε`` with the mean eigenvalue bounds the condition number by ``1 + D / ε`` whatever the network
emits. Without it, an ordinary Cholesky factor with normal(0, 3) raw entries already gives a covariance that
is not positive definite in float64 at ``D = 5`` (measured), because the condition number of a random
triangular matrix grows exponentially with ``D``. The ridge caps representable correlations at about
``1 − ε``, far beyond what any of our data needs."""

PSEUDO_LABEL_JITTER: Final = 1e-4
"""Ridge added to every pseudo-label, relative to the mean target variance ``tr(Cov(Y)) / D``.

With fewer distinct neighbours than target dimensions the weighted neighbourhood covariance is singular;
the ridge makes every label SPD while changing a well-posed label by 0.01 % of the data scale. Constant
targets (zero variance) fall back to a ridge of ``1e-4`` in absolute units."""

LOCAL_LINEAR_RIDGE: Final = 1e-3
"""Ridge on the slopes of the ``local-linear`` pseudo-labels' weighted fit, relative to the mean diagonal
of the slope block of ``XᵀWX``: keeps the fit solvable when neighbours coincide or span fewer than ``M``
directions, and shrinks a well-posed slope by about 0.1 %."""

FLOAT32_SYMMETRY_RTOL: Final = 1e-4
"""Largest accepted ``max |S − Sᵀ| / max |S|`` of a covariance handed to the metrics or plots: covariances
assembled in float32 (``A Aᵀ`` products) pass, a matrix that is not a covariance does not. (A covariance the
exported graph returns is held to ``covserve.repository.OUTPUT_SYMMETRY_RTOL`` instead: it symmetrises
exactly.)"""

LOCAL_LINEAR_DOF_FLOOR: Final = 0.05
"""Smallest residual-degrees-of-freedom share ``cᵢ = 1 − tr((XᵀWX + R)⁻¹ XᵀW²X)`` that the
``local-linear`` labels divide by. Near 0 the fit interpolates its neighbours (residuals vanish and the
ratio is 0 / 0); the floor caps the inflation at 20× instead of letting rounding decide."""

INPUT_METRIC_RIDGE: Final = 1e-8
"""Ridge on the training inputs' covariance before it defines the Mahalanobis metric of the pseudo-labels,
relative to the mean input variance: keeps constant or collinear input columns from making it singular
while leaving a well-conditioned metric unchanged to eight digits."""

TARGET_RANK_TOLERANCE: Final = 1e-8
"""Smallest ÷ largest singular value of the standardised training targets below which they count as
linearly dependent (and a column's weight in a dependency below which it is not named).

An exact dependency such as UCI electrical's ``p1 = −(p2 + p3 + p4)`` leaves a singular value near
``1e-15`` of the largest after float64 rounding; correlated but independent targets stay far above. Along a
dependency the true covariance is singular, so only :data:`RELATIVE_RIDGE` keeps a likelihood finite."""


CONSTANT_COLUMN_RTOL: Final = 1e-9
"""A data column is constant when its standard deviation is at most this times its largest magnitude.

A column that holds one value ``v`` computes a float64 standard deviation of about ``1e-16 |v|``, not 0,
so an exact test misses it and standardising then divides rounding noise by rounding noise. Real
measurements vary far more than ``1e-9`` of their magnitude."""


MIN_STANDARD_DEVIATION: Final = 1e-12
"""Smallest standard deviation of a data column that is not constant: standardisation divides by it, and
below this float32 rounding of the exported graph swamps the signal. Constant columns (by
:data:`CONSTANT_COLUMN_RTOL`) are scaled by 1; a varying column below this is refused with a rescaling
hint."""

MAX_ABS_DATA_VALUE: Final = 1e30
"""Largest magnitude accepted in a data column: the exported graph computes in float32 (at most 3.4e38),
and squares and products of standardised values must not overflow in float64 either."""

MAX_TARGET_STANDARD_DEVIATION: Final = 1e15
"""Largest standard deviation of a target column (``holdout`` protocol, raw units): a covariance scales
with its square, and the exported float32 covariance must hold it with room for the model's own range
(``1e30`` leaves eight orders of magnitude below float32's 3.4e38)."""


def constant_columns(values: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Which columns of ``values`` ``(N, C)`` are constant by :data:`CONSTANT_COLUMN_RTOL`, shape ``(C,)``
    (an all-zero column is constant)."""
    magnitude = np.abs(values).max(axis=0, initial=0.0)
    constant: NDArray[np.bool_] = values.std(axis=0) <= CONSTANT_COLUMN_RTOL * magnitude
    return constant

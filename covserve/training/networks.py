"""Mean and covariance networks, and the model that wraps them with the data's standardisation.

The architecture follows the TIC-TAC / ToSS code: two *separate* residual MLPs, one for the mean and one
for the raw covariance outputs, each ``Linear → ELU → depth × [Linear → ELU → Linear → BatchNorm → ELU +
skip] → Linear``. Networks work in standardised units; :class:`CovarianceModel` maps raw-unit inputs to
raw-unit predictions, which is the graph exported to ONNX.

The covariance network's output layer starts with zero weights and the parameterisation's identity as its
bias, so every model starts at ``Σ(x) = I``: unit variance in standardised units, the data's own scale.
PyTorch's default initialisation instead starts ``Σ(x)`` at a random covariance whose eigenvalues spread
with ``D`` (at ``D = 16`` from 0.004 to 5, and to 29 for the ``sqrt`` head, whose ``Σ = S²`` squares
them); shrinking it in the first epoch collapsed one direction of the W2 bound's root for good (smallest
eigenvalue 10⁻⁵ against a truth of 1.5, KL to the truth 26 110 in one trial of the synthetic benchmark;
1.36 from the identity start) and left NLL's covariance far from the truth (W2² 532 against 5.1 from the
identity start, same trial and seed). The identity start does not prevent every such collapse of the
bound's root (another D = 16 trial still loses a direction; see ``benchmarks/results/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from covserve.training.covariance import (
    CovarianceKind,
    FactoredCovariance,
    Parameterisation,
    make_parameterisation,
    taylor_terms,
)
from covserve.training.numerics import MIN_STANDARD_DEVIATION, constant_columns

__all__ = ["CovarianceModel", "Prediction", "ResidualMLP", "Standardisation", "default_width"]


def default_width(out_dim: int) -> int:
    """TIC-TAC's latent width ``D² + 2`` (at least 32 so tiny problems are not starved)."""
    return max(out_dim * out_dim + 2, 32)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(width, width), nn.ELU(), nn.Linear(width, width), nn.BatchNorm1d(width), nn.ELU()
        )

    def forward(self, hidden: Tensor) -> Tensor:
        result: Tensor = hidden + self.body(hidden)
        return result


class ResidualMLP(nn.Module):
    """``(B, in_dim) → (B, out_dim)`` residual MLP with ``depth`` blocks of ``width`` units."""

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(in_dim, width),
            nn.ELU(),
            *(_ResidualBlock(width) for _ in range(depth)),
            nn.Linear(width, out_dim),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        result: Tensor = self.network(inputs)
        return result

    def start_output_at(self, output: Tensor) -> None:
        """Zero the output layer's weights and set its bias to ``output`` ``(out_dim,)``.

        Every input then maps to ``output`` until training moves the weights; the hidden layers keep their
        random initialisation and receive gradient once the first step has moved the output weights.
        """
        layer = self.network[-1]
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"output layer: expected nn.Linear, got {type(layer).__name__}")
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.copy_(output)


@dataclass(frozen=True)
class Standardisation:
    """Per-column mean and standard deviation of the training split, in raw units.

    ``input_mean``, ``input_std`` ``(M,)``; ``target_mean``, ``target_std`` ``(D,)``.
    """

    input_mean: NDArray[np.float64]
    input_std: NDArray[np.float64]
    target_mean: NDArray[np.float64]
    target_std: NDArray[np.float64]

    @classmethod
    def fit(cls, inputs: NDArray[np.float64], targets: NDArray[np.float64]) -> Standardisation:
        """Statistics of ``inputs`` ``(N, M)`` and ``targets`` ``(N, D)``; constant columns get std 1."""

        def std(values: NDArray[np.float64]) -> NDArray[np.float64]:
            deviation = values.std(axis=0)
            return np.where(constant_columns(values) | (deviation < MIN_STANDARD_DEVIATION), 1.0, deviation)

        return cls(inputs.mean(axis=0), std(inputs), targets.mean(axis=0), std(targets))


@dataclass(frozen=True)
class Prediction:
    """Predictions in standardised target units: ``mean`` ``(B, D)`` and its factored covariance."""

    mean: Tensor
    covariance: FactoredCovariance


class CovarianceModel(nn.Module):
    """Mean network + covariance network + parameterisation, with the standardisation as buffers.

    :meth:`predict` works in standardised units (training); :meth:`forward` takes raw-unit inputs
    ``x`` ``(B, M)`` and returns raw-unit ``mean`` ``(B, D)``, ``covariance`` ``(B, D, D)`` and ``scale``
    ``(B, D, D)`` with ``scale · scaleᵀ = covariance``, using only ONNX-exportable operations. The raw-unit
    covariance carries the post-training variance calibration: the scalar buffer ``covariance_calibration``
    ``c`` multiplies it (1 while training; set by :func:`training.trainer.calibrate`).
    """

    input_mean: Tensor
    input_std: Tensor
    target_mean: Tensor
    target_std: Tensor
    covariance_calibration: Tensor

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kind: CovarianceKind | str,
        standardisation: Standardisation,
        *,
        width: int | None = None,
        depth: int = 5,
    ) -> None:
        super().__init__()
        self.parameterisation: Parameterisation = make_parameterisation(kind, out_dim)
        hidden = width if width is not None else default_width(out_dim)
        self.mean_network = ResidualMLP(in_dim, out_dim, hidden, depth)
        self.covariance_network = ResidualMLP(in_dim, self.parameterisation.raw_size, hidden, depth)
        self.covariance_network.start_output_at(self.parameterisation.identity_raw())
        for name in ("input_mean", "input_std", "target_mean", "target_std"):
            value = torch.as_tensor(getattr(standardisation, name), dtype=torch.float32)
            self.register_buffer(name, value)
        self.register_buffer("covariance_calibration", torch.ones((), dtype=torch.float32))

    @property
    def kind(self) -> CovarianceKind:
        """The covariance parameterisation."""
        return self.parameterisation.kind

    def standardise_inputs(self, inputs: Tensor) -> Tensor:
        """Raw ``(B, M)`` to standardised inputs."""
        return (inputs - self.input_mean) / self.input_std

    def standardise_targets(self, targets: Tensor) -> Tensor:
        """Raw ``(B, D)`` to standardised targets."""
        return (targets - self.target_mean) / self.target_std

    def predict(self, standardised_inputs: Tensor, *, exportable: bool = False) -> Prediction:
        """Mean and factored covariance in standardised target units for ``(B, M)`` standardised inputs."""
        mean = self.mean_network(standardised_inputs)
        taylor = None
        if self.parameterisation.needs_taylor_terms:
            was_training = self.mean_network.training
            self.mean_network.eval()
            taylor = taylor_terms(self.mean_network, standardised_inputs)
            self.mean_network.train(was_training)
        raw = self.covariance_network(standardised_inputs)
        return Prediction(mean, self.parameterisation(raw, taylor, exportable=exportable))

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw-unit ``(mean (B, D), covariance (B, D, D), scale (B, D, D))`` for raw inputs ``(B, M)``."""
        prediction = self.predict(self.standardise_inputs(inputs), exportable=True)
        mean = prediction.mean * self.target_std + self.target_mean
        target_scale = self.target_std.unsqueeze(-1) * self.covariance_calibration.sqrt()
        scale = prediction.covariance.factor * target_scale
        covariance = scale @ scale.transpose(-1, -2)
        return mean, 0.5 * (covariance + covariance.transpose(-1, -2)), scale

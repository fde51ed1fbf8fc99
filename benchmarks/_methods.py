"""The methods the evidence benchmarks compare (:mod:`covserve.training.methods`) and their tables.

Every method of the core registry plus the hybrid; the W2 bound and the hybrid also with each label scheme
beyond the paper's after a ``+`` (``w2-bound+residuals``, ``hybrid+local-linear``). A name without a scheme
trains on ``targets`` labels, the paper's Algorithm 1 (:func:`benchmark_config`). Within a trial all
methods see the same split, the same batches and the same initial mean network.
"""

from __future__ import annotations

from covserve.training.config import Device, ModelConfig, TrainConfig
from covserve.training.data import Split
from covserve.training.methods import HYBRID, Method
from covserve.training.methods import fit_and_score as fit_and_score_with
from covserve.training.methods import train_method as train_method_with
from covserve.training.pseudolabels import LabelScheme
from covserve.training.trainer import TrainingResult

__all__ = [
    "ALL_METHODS",
    "LABELLED_METHODS",
    "Method",
    "benchmark_config",
    "fit_and_score",
    "parse_methods",
    "train_method",
]

BASE_METHODS: tuple[str, ...] = (
    "mse",
    "diagonal",
    "nll",
    "beta-nll",
    "faithful",
    "nll-tic",
    "kl",
    "w2",
    "w2-bound",
    HYBRID,
)
"""The methods without a label scheme (``targets`` labels where they use any)."""
LABELLED_METHODS: tuple[str, ...] = tuple(
    f"{base}+{scheme.value}"
    for base in ("w2-bound", HYBRID)
    for scheme in LabelScheme
    if scheme is not LabelScheme.TARGETS
)
"""The W2 bound and the hybrid with each label scheme beyond the paper's."""
ALL_METHODS: tuple[str, ...] = BASE_METHODS + LABELLED_METHODS


def parse_methods(text: str) -> list[Method]:
    """Comma-separated names from :data:`ALL_METHODS` (``all`` for every one)."""
    names = list(ALL_METHODS) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(ALL_METHODS)}")
    return [Method(name) for name in names]


def benchmark_config(epochs: int, lr: float, seed: int, calibrate: bool) -> TrainConfig:
    """The benchmarks' base configuration: on the CPU, ``targets`` labels unless a method names others."""
    return TrainConfig(
        epochs=epochs, lr=lr, seed=seed, device=Device.CPU, calibrate=calibrate, labels=LabelScheme.TARGETS
    )


def train_method(
    method: Method, split: Split, *, epochs: int, lr: float, seed: int, calibrate: bool, model: ModelConfig
) -> TrainingResult:
    """Train ``method`` on ``split`` on the CPU (run files go to a temporary directory); raises
    ``TrainingDivergedError`` like :func:`covserve.training.trainer.train`."""
    return train_method_with(method, split, benchmark_config(epochs, lr, seed, calibrate), model)


def fit_and_score(
    method: Method, split: Split, *, epochs: int, lr: float, seed: int, calibrate: bool, model: ModelConfig
) -> dict[str, float]:
    """:func:`covserve.training.methods.fit_and_score` under :func:`benchmark_config`."""
    return fit_and_score_with(method, split, benchmark_config(epochs, lr, seed, calibrate), model)

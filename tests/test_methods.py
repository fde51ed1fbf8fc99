"""``covserve.training.methods``: method names, each method's training configuration, NGBoost's scoring."""

from __future__ import annotations

import pytest

from covserve.training.config import Hybrid, TrainConfig
from covserve.training.losses import LossName
from covserve.training.methods import ALL_METHODS, NGBOOST, Method, ngboost_installed, parse_methods
from covserve.training.pseudolabels import LabelScheme


@pytest.mark.parametrize(
    ("name", "method", "labels", "epochs", "hybrid_epochs"),
    [
        ("w2-bound", LossName.W2_BOUND, LabelScheme.RESIDUALS, 10, 0),
        ("w2-bound+targets", LossName.W2_BOUND, LabelScheme.TARGETS, 10, 0),
        ("nll", LossName.NLL, LabelScheme.RESIDUALS, 10, 0),
        ("hybrid", Hybrid.HYBRID, LabelScheme.RESIDUALS, 10, 3),
        ("hybrid+local-linear", Hybrid.HYBRID, LabelScheme.LOCAL_LINEAR, 10, 3),
    ],
)
def test_hybrid_epochs_shape_the_hybrid_rows_only(
    name: str, method: LossName | Hybrid, labels: LabelScheme, epochs: int, hybrid_epochs: int
) -> None:
    config = Method(name).train_config(TrainConfig(epochs=10, hybrid_epochs=3, lr=1e-3))
    assert (config.method, config.labels, config.epochs, config.bound_epochs) == (
        method,
        labels,
        epochs,
        hybrid_epochs,
    )
    assert config.lr == 1e-3


def test_the_hybrid_defaults_to_half_the_epochs_and_has_two_phases_at_least() -> None:
    assert Method("hybrid").train_config(TrainConfig(epochs=9)).bound_epochs == 4
    one = Method("hybrid").train_config(TrainConfig(epochs=1))
    assert (one.epochs, one.bound_epochs) == (2, 1)


def test_parse_methods_names_what_is_unknown() -> None:
    assert [method.name for method in parse_methods(" nll , hybrid+targets ")] == ["nll", "hybrid+targets"]
    with pytest.raises(ValueError, match=r"unknown \['w3', 'nll\+targets'\]; choose from mse, nll"):
        parse_methods("w3,nll+targets")
    with pytest.raises(ValueError, match="no method given"):
        parse_methods(" , ")
    assert len(parse_methods("all")) == len(ALL_METHODS)
    assert NGBOOST in ALL_METHODS
    assert ngboost_installed()

"""Algorithm 1 pseudo-labels: exact on hand-made neighbourhoods, close to the truth on synthetic data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from covserve.training.config import Device, ModelConfig, TrainConfig, parse_method
from covserve.training.data import DataConfig, load_split
from covserve.training.distributed import SINGLE
from covserve.training.labelling import RunLabels
from covserve.training.numerics import INPUT_METRIC_RIDGE, PSEUDO_LABEL_JITTER
from covserve.training.pseudolabels import (
    ALL_PARTS,
    DEFAULT_NEIGHBOURS,
    LabelPart,
    PseudoLabels,
    compute_pseudo_labels,
    find_neighbourhoods,
    labels_from_neighbourhoods,
    mahalanobis_whitening,
)
from covserve.training.synthetic import multivariate
from covserve.training.trainer import _run_labels, build_model, train

RECOVERY_THRESHOLD = 0.5
"""Mean relative Frobenius error allowed on the 4 → 4 synthetic set (measured: 0.382).

A weighted sample covariance of ``k = 64`` neighbours (effective count about 40 after the softmax) has a
relative Frobenius sampling error of about ``√((D + 1) / 40) ≈ 0.35`` at ``D = 4`` even with a perfect
neighbourhood; 0.5 leaves room for the bias from the mean varying across the neighbourhood, and stays
far below the homoscedastic baseline's 2.3."""


def _relative_frobenius(estimate: np.ndarray, truth: np.ndarray) -> float:
    difference = np.linalg.norm((estimate - truth).reshape(len(truth), -1), axis=1)
    return float(np.mean(difference / np.linalg.norm(truth.reshape(len(truth), -1), axis=1)))


@pytest.fixture(scope="module")
def synthetic_labels() -> tuple[PseudoLabels, np.ndarray, np.ndarray]:
    data = multivariate(4, 4, 4000, seed=0)
    labels = compute_pseudo_labels(torch.from_numpy(data.inputs), torch.from_numpy(data.targets))
    return labels, data.covariance, data.targets


def test_labels_recover_the_true_heteroscedastic_covariance(
    synthetic_labels: tuple[PseudoLabels, np.ndarray, np.ndarray],
) -> None:
    labels, truth, targets = synthetic_labels
    error = _relative_frobenius(labels.covariance.numpy(), truth)
    homoscedastic = np.broadcast_to(np.cov(targets.T), truth.shape)
    assert error < RECOVERY_THRESHOLD
    assert error < 0.5 * _relative_frobenius(homoscedastic, truth)


def test_labels_are_spd_with_consistent_roots_and_log_dets(
    synthetic_labels: tuple[PseudoLabels, np.ndarray, np.ndarray],
) -> None:
    labels, _, _ = synthetic_labels
    assert len(labels) == 4000
    assert torch.equal(labels.covariance, labels.covariance.mT)
    assert torch.linalg.eigvalsh(labels.covariance).min() > 0
    torch.testing.assert_close(labels.root @ labels.root, labels.covariance, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(labels.log_det, torch.logdet(labels.covariance), rtol=1e-10, atol=1e-10)
    batch = labels.select(torch.tensor([3, 1]))
    torch.testing.assert_close(batch.covariance, labels.covariance[[3, 1]])


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize(
    ("chunk_elements", "tile_columns", "neighbours"),
    [(1500 * 7, 1500, 64), (97 * 5, 97, 64), (40 * 1000, 1000, 64), (256 * 5, 256, 4)],
    ids=["row-chunks", "tiles-narrower-than-k-at-the-end", "two-uneven-tiles", "grouped-selection"],
)
def test_chunked_and_tiled_labels_equal_one_block(
    include_self: bool, chunk_elements: int, tile_columns: int, neighbours: int
) -> None:
    """The last tile of 97 columns holds 45 (< k = 64) candidates, and 1000 leaves one of 500. Tiles of
    256 with k = 4 hold 8 selection groups of 32, more than k, so they take the grouped selection."""
    data = multivariate(3, 2, 1500, seed=4)
    inputs, targets = torch.from_numpy(data.inputs), torch.from_numpy(data.targets)
    whole = compute_pseudo_labels(
        inputs, targets, neighbours=neighbours, include_self=include_self, chunk_elements=1500 * 1500
    )
    chunked = compute_pseudo_labels(
        inputs,
        targets,
        neighbours=neighbours,
        include_self=include_self,
        chunk_elements=chunk_elements,
        tile_columns=tile_columns,
    )
    for field in ("mean", "covariance", "root", "log_det"):
        torch.testing.assert_close(getattr(chunked, field), getattr(whole, field), rtol=1e-10, atol=1e-12)


def _naive_labels(inputs: np.ndarray, targets: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 row by row: the full Mahalanobis distance matrix, a sort, softmax(−d / d̄), no chunks."""
    covariance = np.cov(inputs, rowvar=False)
    ridge = INPUT_METRIC_RIDGE * np.trace(covariance) / len(covariance)
    metric = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    jitter = PSEUDO_LABEL_JITTER * targets.var(axis=0, ddof=1).mean()
    means, covariances = [], []
    for query in inputs:
        difference = inputs - query
        distances = np.einsum("nm,mk,nk->n", difference, metric, difference)
        nearest = np.argsort(distances, kind="stable")[:neighbours]
        logits = -distances[nearest] / distances[nearest].mean()
        weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        mean = weights @ targets[nearest]
        centred = targets[nearest] - mean
        means.append(mean)
        covariances.append((weights[:, None] * centred).T @ centred + jitter * np.eye(targets.shape[1]))
    return np.array(means), np.array(covariances)


@pytest.mark.parametrize(
    ("samples", "tile_columns"), [(400, 400), (400, 23), (3000, 1024)], ids=["one-tile", "tiles", "grouped"]
)
def test_labels_match_a_naive_row_by_row_reference(samples: int, tile_columns: int) -> None:
    """1024 columns are 32 selection groups, more than k = 16: the grouped selection against a full sort."""
    data = multivariate(3, 2, samples, seed=7)
    labels = compute_pseudo_labels(
        torch.from_numpy(data.inputs),
        torch.from_numpy(data.targets),
        neighbours=16,
        chunk_elements=tile_columns * 13,
        tile_columns=tile_columns,
    )
    means, covariances = _naive_labels(data.inputs, data.targets, 16)
    np.testing.assert_allclose(labels.mean.numpy(), means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(labels.covariance.numpy(), covariances, rtol=1e-9, atol=1e-12)


def test_algorithm_1_on_a_hand_made_neighbourhood() -> None:
    """Uniform weights (τ = ∞), k = 2 including the query: the label of x₀ is the covariance of {y₀, y₁}."""
    inputs = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    targets = torch.tensor([[0.0, 0.0], [2.0, 4.0], [5.0, 5.0], [9.0, 1.0]], dtype=torch.float64)
    labels = compute_pseudo_labels(inputs, targets, neighbours=2, temperature=math.inf)
    jitter = 1e-4 * float(targets.var(dim=0).mean())
    difference = targets[1] - targets[0]
    expected = 0.25 * torch.outer(difference, difference) + jitter * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(labels.covariance[0], expected)
    torch.testing.assert_close(labels.mean[0], 0.5 * (targets[0] + targets[1]))

    excluded = compute_pseudo_labels(inputs, targets, neighbours=2, temperature=math.inf, include_self=False)
    torch.testing.assert_close(excluded.mean[0], 0.5 * (targets[1] + targets[2]))


def test_closer_neighbours_weigh_more() -> None:
    inputs = torch.tensor([[0.0], [0.1], [5.0], [9.0], [10.0]], dtype=torch.float64)
    targets = torch.tensor([[0.0], [1.0], [-1.0], [3.0], [4.0]], dtype=torch.float64)
    labels = compute_pseudo_labels(inputs, targets, neighbours=3, temperature=0.5, include_self=False)
    assert labels.mean[0, 0] > 0.5, "the neighbour at distance 0.1 (target 1) must dominate the one at 5"


def test_constant_targets_give_a_small_positive_definite_label() -> None:
    inputs = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = compute_pseudo_labels(inputs, torch.ones(50, 3, dtype=torch.float32), neighbours=5)
    assert labels.covariance.dtype == torch.float32
    torch.testing.assert_close(labels.covariance, 1e-4 * torch.eye(3).expand(50, 3, 3))
    assert (torch.linalg.cholesky_ex(labels.covariance).info == 0).all()


def test_whitening_turns_the_mahalanobis_metric_euclidean() -> None:
    generator = torch.Generator().manual_seed(1)
    mixing = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [0.0, 0.0, 10.0]], dtype=torch.float64)
    inputs = torch.randn(5000, 3, dtype=torch.float64, generator=generator) @ mixing.T
    whitening = mahalanobis_whitening(inputs)
    covariance = torch.cov(inputs.T)
    identity = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(whitening.T @ covariance @ whitening, identity, rtol=0, atol=1e-5)


def test_constant_input_columns_do_not_break_the_metric() -> None:
    inputs = torch.cat([torch.randn(200, 2, dtype=torch.float64), torch.ones(200, 1, dtype=torch.float64)], 1)
    labels = compute_pseudo_labels(inputs, torch.randn(200, 2, dtype=torch.float64), neighbours=10)
    assert torch.isfinite(labels.covariance).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"neighbours": 1}, r"neighbours: expected an integer in \[2, 30\], got 1"),
        ({"neighbours": 31}, r"neighbours: expected an integer in \[2, 30\], got 31"),
        ({"neighbours": 5, "temperature": 0.0}, "temperature: expected a positive number"),
    ],
)
def test_invalid_options_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_pseudo_labels(torch.randn(30, 2), torch.randn(30, 2), **kwargs)  # type: ignore[arg-type]


def test_mismatched_rows_are_named() -> None:
    with pytest.raises(ValueError, match="targets: expected 30 rows to match inputs, got 29"):
        compute_pseudo_labels(torch.randn(30, 2), torch.randn(29, 2), neighbours=DEFAULT_NEIGHBOURS)


def test_absolute_temperature_collapses_onto_the_query_with_many_inputs() -> None:
    """The literal Algorithm 1 (τ = 1 on raw squared distances) puts all weight on the query itself with 16
    whitened inputs; the relative temperature keeps a real neighbourhood. Targets are independent unit
    normals, so a sound label is close to the identity."""
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(3000, 16, dtype=torch.float64, generator=generator)
    targets = torch.randn(3000, 2, dtype=torch.float64, generator=generator)
    relative = compute_pseudo_labels(inputs, targets)
    absolute = compute_pseudo_labels(inputs, targets, temperature_scale="absolute")
    relative_variance = torch.diagonal(relative.covariance, dim1=-2, dim2=-1).mean()
    absolute_variance = torch.diagonal(absolute.covariance, dim1=-2, dim2=-1).mean()
    assert 0.7 < relative_variance < 1.3
    assert absolute_variance < 0.05
    with pytest.raises(ValueError, match="temperature_scale: expected one of relative, absolute, got 'log'"):
        compute_pseudo_labels(inputs, targets, temperature_scale="log")


@pytest.mark.parametrize("scheme", ["targets", "residuals", "local-linear"])
def test_labels_keep_only_the_parts_asked_for_with_the_same_values_in_any_block_size(scheme: str) -> None:
    data = multivariate(3, 3, 900, seed=5)
    inputs, targets = torch.from_numpy(data.inputs), torch.from_numpy(data.targets).float()
    found = find_neighbourhoods(inputs, neighbours=24)
    predictions = targets * 0.5 if scheme == "residuals" else None
    whole = labels_from_neighbourhoods(
        found, targets, scheme, predictions=predictions, chunk_elements=1 << 30
    )
    lean = labels_from_neighbourhoods(
        found,
        targets,
        scheme,
        predictions=predictions,
        chunk_elements=24 * 3 * 50,
        parts=frozenset({LabelPart.COVARIANCE}),
    )
    assert whole.parts == ALL_PARTS
    assert lean.parts == {LabelPart.COVARIANCE}
    torch.testing.assert_close(lean.covariance, whole.covariance, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lean.mean, whole.mean, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"do not keep their root \(kept: covariance\)"):
        _ = lean.root
    batch = lean.select(torch.tensor([3, 1]))
    assert batch.parts == {LabelPart.COVARIANCE}
    assert torch.equal(batch.covariance, lean.covariance[[3, 1]])


def test_a_run_keeps_the_label_parts_its_losses_read(tmp_path: Path) -> None:
    split = load_split(DataConfig(samples=300))
    cpu = TrainConfig(device=Device.CPU, epochs=2)
    model = build_model(split, cpu, ModelConfig(width=8, depth=1))
    bound = RunLabels.build(model, split.train, cpu, frozenset({LabelPart.COVARIANCE}))
    assert bound.current.parts == {LabelPart.COVARIANCE}
    for method, parts in [
        ("w2-bound", {LabelPart.COVARIANCE}),
        ("hybrid", {LabelPart.COVARIANCE}),
        ("kl", {LabelPart.ROOT, LabelPart.LOG_DET}),
        ("w2", {LabelPart.ROOT, LabelPart.COVARIANCE}),
    ]:
        config = TrainConfig(method=parse_method(method), device=Device.CPU, epochs=2)
        result = train(
            split, config, ModelConfig(width=8, depth=1), run_dir=tmp_path / method, progress=False
        )
        assert result.history, method
        labels = _run_labels(
            build_model(split, config, ModelConfig(width=8, depth=1)), split.train, config, SINGLE
        )
        assert labels is not None
        assert labels.current.parts == parts, method

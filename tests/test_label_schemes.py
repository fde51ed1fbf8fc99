"""Label schemes beyond Algorithm 1: naive references, a known answer, SPD on degenerate neighbourhoods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covserve.training.numerics import (
    INPUT_METRIC_RIDGE,
    LOCAL_LINEAR_DOF_FLOOR,
    LOCAL_LINEAR_RIDGE,
    PSEUDO_LABEL_JITTER,
)
from covserve.training.pseudolabels import (
    LabelScheme,
    compute_pseudo_labels,
    find_neighbourhoods,
    labels_from_neighbourhoods,
)
from covserve.training.synthetic import multivariate


def _naive_neighbourhoods(inputs: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Row by row: the full Mahalanobis distance matrix, a sort, softmax(−d / d̄); rows ascending."""
    covariance = np.cov(inputs, rowvar=False)
    ridge = INPUT_METRIC_RIDGE * np.trace(covariance) / len(covariance)
    metric = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    indices, weights = [], []
    for query in inputs:
        difference = inputs - query
        distances = np.einsum("nm,mk,nk->n", difference, metric, difference)
        nearest = np.sort(np.argsort(distances, kind="stable")[:neighbours])
        logits = -distances[nearest] / distances[nearest].mean()
        indices.append(nearest)
        weights.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    return np.array(indices), np.array(weights)


def _jitter(targets: np.ndarray) -> np.ndarray:
    scale = float(targets.var(axis=0, ddof=1).mean())
    return PSEUDO_LABEL_JITTER * scale * np.eye(targets.shape[1])


def _naive_residual_labels(
    targets: np.ndarray, predictions: np.ndarray, indices: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    residuals = targets - predictions
    labels = [
        (w[:, None] * residuals[index]).T @ residuals[index] + _jitter(targets)
        for index, w in zip(indices, weights, strict=True)
    ]
    return np.array(labels)


def _naive_local_linear_labels(
    whitened: np.ndarray, targets: np.ndarray, indices: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares neighbourhood by neighbourhood, with the ridge and dof share spelt out."""
    means, labels = [], []
    for row, (index, w) in enumerate(zip(indices, weights, strict=True)):
        design = np.hstack([np.ones((len(index), 1)), whitened[index] - whitened[row]])
        gram = design.T @ np.diag(w) @ design
        ridge = LOCAL_LINEAR_RIDGE * np.mean(np.diag(gram)[1:])
        gram += np.diag([0.0] + [ridge] * (design.shape[1] - 1))
        coefficients = np.linalg.solve(gram, design.T @ np.diag(w) @ targets[index])
        errors = targets[index] - design @ coefficients
        dof = 1.0 - np.trace(np.linalg.solve(gram, design.T @ np.diag(w**2) @ design))
        means.append(coefficients[0])
        labels.append(errors.T @ np.diag(w) @ errors / max(dof, LOCAL_LINEAR_DOF_FLOOR) + _jitter(targets))
    return np.array(means), np.array(labels)


@pytest.fixture(scope="module")
def small_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = multivariate(3, 2, 300, seed=5)
    return data.inputs, data.targets, data.mean


def test_neighbourhoods_match_a_naive_search(small_set: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    inputs, _, _ = small_set
    found = find_neighbourhoods(
        torch.from_numpy(inputs), neighbours=12, tile_columns=64, chunk_elements=64 * 7
    )
    indices, weights = _naive_neighbourhoods(inputs, 12)
    np.testing.assert_array_equal(found.index.numpy(), indices)
    np.testing.assert_allclose(found.weights.numpy(), weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(found.weights.sum(dim=1).numpy(), 1.0, rtol=1e-12)


def test_residual_labels_match_a_naive_reference(
    small_set: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    inputs, targets, truth_mean = small_set
    predictions = truth_mean + 0.1  # a biased mean: its error must end up in the label
    labels = compute_pseudo_labels(
        torch.from_numpy(inputs),
        torch.from_numpy(targets),
        scheme="residuals",
        predictions=torch.from_numpy(predictions),
        neighbours=12,
        chunk_elements=12 * 2 * 5,  # label blocks of five rows
    )
    indices, weights = _naive_neighbourhoods(inputs, 12)
    expected = _naive_residual_labels(targets, predictions, indices, weights)
    np.testing.assert_allclose(labels.covariance.numpy(), expected, rtol=1e-9, atol=1e-12)
    residual_means = np.einsum("nk,nkd->nd", weights, (targets - predictions)[indices])
    np.testing.assert_allclose(labels.mean.numpy(), predictions + residual_means, rtol=1e-9, atol=1e-12)


def test_local_linear_labels_match_a_naive_reference(
    small_set: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    inputs, targets, _ = small_set
    neighbourhoods = find_neighbourhoods(torch.from_numpy(inputs), neighbours=12)
    labels = labels_from_neighbourhoods(
        neighbourhoods, torch.from_numpy(targets), LabelScheme.LOCAL_LINEAR, chunk_elements=12 * 6 * 7
    )
    indices, weights = _naive_neighbourhoods(inputs, 12)
    means, expected = _naive_local_linear_labels(neighbourhoods.whitened.numpy(), targets, indices, weights)
    np.testing.assert_allclose(labels.covariance.numpy(), expected, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(labels.mean.numpy(), means, rtol=1e-8, atol=1e-11)


def test_a_linear_mean_with_constant_noise_is_recovered_by_the_new_schemes_only() -> None:
    """``y = B x + ε``, ``ε ~ N(0, Σ)`` with one Σ everywhere: ``residuals`` (with the true mean) and
    ``local-linear`` average to Σ within sampling error; ``targets`` adds the slope term ``B Cᵢ Bᵀ`` of the
    neighbourhood's input spread to every label."""
    generator = np.random.default_rng(0)
    inputs = generator.uniform(-1.0, 1.0, size=(4000, 2))
    slope = np.array([[3.0, -2.0], [1.0, 4.0]])
    noise_covariance = np.array([[0.04, 0.01], [0.01, 0.02]])
    mean = inputs @ slope.T
    targets = mean + generator.multivariate_normal(np.zeros(2), noise_covariance, size=4000)
    x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
    neighbourhoods = find_neighbourhoods(x, neighbours=64)

    def average(scheme: str, predictions: torch.Tensor | None = None) -> np.ndarray:
        labels = labels_from_neighbourhoods(neighbourhoods, y, scheme, predictions=predictions)
        return labels.covariance.mean(dim=0).numpy()

    def relative_error(estimate: np.ndarray) -> float:
        return float(np.linalg.norm(estimate - noise_covariance) / np.linalg.norm(noise_covariance))

    assert relative_error(average("residuals", torch.from_numpy(mean))) < 0.03
    assert relative_error(average("local-linear")) < 0.03
    targets_average = average("targets")
    assert relative_error(targets_average) > 0.5
    assert np.trace(targets_average) > 1.5 * np.trace(noise_covariance)  # inflated, not just noisy


def test_new_labels_are_closer_to_the_truth_on_the_synthetic_generator() -> None:
    """Measured in this setting (D = 4, all 4 000 rows, k = 64; mean relative Frobenius error): targets
    0.382, local-linear 0.288, residuals of the true mean 0.277. ``benchmarks/results/label_schemes.md``
    makes the same comparison on the benchmark's training rows."""
    data = multivariate(4, 4, 4000, seed=0)
    neighbourhoods = find_neighbourhoods(torch.from_numpy(data.inputs))
    targets = torch.from_numpy(data.targets)
    truth = data.covariance

    def error(scheme: str, predictions: torch.Tensor | None = None) -> float:
        labels = labels_from_neighbourhoods(neighbourhoods, targets, scheme, predictions=predictions)
        difference = np.linalg.norm((labels.covariance.numpy() - truth).reshape(len(truth), -1), axis=1)
        return float(np.mean(difference / np.linalg.norm(truth.reshape(len(truth), -1), axis=1)))

    baseline = error("targets")
    assert error("local-linear") < 0.85 * baseline
    assert error("residuals", torch.from_numpy(data.mean)) < 0.85 * baseline


@pytest.mark.parametrize("scheme", ["residuals", "local-linear"])
def test_degenerate_neighbourhoods_still_give_spd_labels(scheme: str) -> None:
    """Ten copies of each of 20 inputs: every neighbourhood of k = 10 is one point (the slopes are not
    identified; the ridge keeps the fit solvable) and constant residuals give a zero second moment."""
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(20, 3, dtype=torch.float64, generator=generator).repeat_interleave(10, dim=0)
    targets = torch.randn(200, 2, dtype=torch.float64, generator=generator)
    predictions = targets.clone() if scheme == "residuals" else None
    labels = compute_pseudo_labels(inputs, targets, scheme=scheme, predictions=predictions, neighbours=10)
    assert torch.isfinite(labels.covariance).all()
    assert (torch.linalg.eigvalsh(labels.covariance) > 0).all()
    torch.testing.assert_close(labels.root @ labels.root, labels.covariance, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    ("scheme", "with_predictions", "neighbours", "message"),
    [
        ("residuals", False, 8, "the residuals scheme needs mean predictions"),
        ("targets", True, 8, "the targets scheme takes no mean predictions"),
        (
            "local-linear",
            False,
            4,
            "local-linear labels fit 4 coefficients .* need at least 5 neighbours, got 4",
        ),
        ("median", False, 8, "scheme: expected one of targets, residuals, local-linear, got 'median'"),
    ],
)
def test_invalid_scheme_options_are_named(
    scheme: str, with_predictions: bool, neighbours: int, message: str
) -> None:
    inputs, targets = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    predictions = torch.zeros_like(targets) if with_predictions else None
    with pytest.raises(ValueError, match=message):
        compute_pseudo_labels(inputs, targets, scheme=scheme, predictions=predictions, neighbours=neighbours)

"""Every loss against an independent reference; Theorem 1; gradient stability of the W2 bound."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from covserve.training.covariance import (
    CovarianceKind,
    FactoredCovariance,
    SymmetricRootCovariance,
    TriangularCovariance,
    make_parameterisation,
    taylor_terms,
)
from covserve.training.losses import (
    DEFAULT_BETA,
    LossName,
    get_loss,
    symmetric_sqrt,
    wasserstein,
    wasserstein_bound,
)
from covserve.training.pseudolabels import PseudoLabels

BATCH = 32
DIM = 4


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(batch: int, dim: int, seed: int) -> torch.Tensor:
    factor = torch.randn(batch, dim, dim, dtype=torch.float64, generator=_generator(seed))
    return factor @ factor.mT + 0.1 * torch.eye(dim, dtype=torch.float64)


def _labels_from(covariance: torch.Tensor) -> PseudoLabels:
    """Pseudo-labels for given covariances, with roots from scipy (an independent route)."""
    roots = np.stack([np.real(scipy.linalg.sqrtm(matrix)) for matrix in covariance.numpy()])
    root = torch.from_numpy(0.5 * (roots + roots.transpose(0, 2, 1)))
    return PseudoLabels(
        torch.zeros(covariance.shape[:-1], dtype=covariance.dtype), covariance, root, torch.logdet(covariance)
    )


def _prediction(kind: CovarianceKind, seed: int = 0) -> tuple[torch.Tensor, FactoredCovariance, torch.Tensor]:
    parameterisation = make_parameterisation(kind, DIM)
    raw = torch.randn(BATCH, parameterisation.raw_size, dtype=torch.float64, generator=_generator(seed))
    taylor = None
    if parameterisation.needs_taylor_terms:
        network = torch.nn.Sequential(
            torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, DIM)
        ).double()
        taylor = taylor_terms(network, torch.randn(BATCH, 3, dtype=torch.float64, generator=_generator(seed)))
    mean = torch.randn(BATCH, DIM, dtype=torch.float64, generator=_generator(seed + 1))
    target = torch.randn(BATCH, DIM, dtype=torch.float64, generator=_generator(seed + 2))
    return mean, parameterisation(raw, taylor), target


def _w2_reference(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    root_b = np.real(scipy.linalg.sqrtm(cov_b))
    cross = np.real(scipy.linalg.sqrtm(root_b @ cov_a @ root_b))
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * cross))


@pytest.mark.parametrize("kind", [CovarianceKind.CHOLESKY, CovarianceKind.SQRT, CovarianceKind.TIC])
def test_nll_matches_torch_multivariate_normal(kind: CovarianceKind) -> None:
    mean, covariance, target = _prediction(kind)
    reference = -MultivariateNormal(mean, covariance_matrix=covariance.covariance()).log_prob(target)
    for name in (LossName.NLL, LossName.NLL_TIC):
        torch.testing.assert_close(get_loss(name).function(mean, covariance, target, None), reference)


def test_diagonal_nll_matches_independent_normals() -> None:
    mean, covariance, target = _prediction(CovarianceKind.DIAGONAL)
    std = covariance.variance().sqrt()
    reference = -Normal(mean, std).log_prob(target).sum(dim=-1)
    torch.testing.assert_close(get_loss("diagonal").function(mean, covariance, target, None), reference)


def test_beta_nll_weights_each_dimension_by_detached_variance() -> None:
    mean, covariance, target = _prediction(CovarianceKind.DIAGONAL)
    mean = mean.clone().requires_grad_()
    variance = covariance.variance()
    per_dimension = -Normal(mean, variance.sqrt()).log_prob(target)
    reference = (variance**DEFAULT_BETA * per_dimension).sum(dim=-1)
    value = get_loss("beta-nll").function(mean, covariance, target, None)
    torch.testing.assert_close(value, reference)
    (gradient,) = torch.autograd.grad(value.sum(), mean)
    expected = variance**DEFAULT_BETA * (mean - target) / variance
    torch.testing.assert_close(gradient, expected.detach())


def test_faithful_trains_the_mean_by_mse_only() -> None:
    mean, covariance, target = _prediction(CovarianceKind.CHOLESKY)
    mean = mean.clone().requires_grad_()
    value = get_loss("faithful").function(mean, covariance, target, None)
    nll = -MultivariateNormal(mean, covariance_matrix=covariance.covariance()).log_prob(target)
    torch.testing.assert_close(value, ((target - mean) ** 2).sum(dim=-1) + nll)
    (gradient,) = torch.autograd.grad(value.sum(), mean)
    torch.testing.assert_close(gradient, (2.0 * (mean - target)).detach())


def test_mse_is_the_squared_error_and_ignores_the_covariance() -> None:
    mean, covariance, target = _prediction(CovarianceKind.DIAGONAL)
    value = get_loss("mse").function(mean, covariance, target, None)
    torch.testing.assert_close(value, ((target - mean) ** 2).sum(dim=-1))


def test_calibrated_kl_matches_torch_kl_minus_a_quarter_of_its_data_terms() -> None:
    mean, covariance, target = _prediction(CovarianceKind.CHOLESKY)
    labels = _labels_from(_random_spd(BATCH, DIM, seed=7))
    predicted = covariance.covariance()
    full_kl = kl_divergence(
        MultivariateNormal(target, covariance_matrix=labels.covariance),
        MultivariateNormal(mean, covariance_matrix=predicted),
    )
    precision = torch.linalg.inv(predicted)
    trace = torch.einsum("bij,bji->b", precision, labels.covariance)
    residual = (target - mean).unsqueeze(-1)
    quadratic = (residual.mT @ precision @ residual).squeeze((-2, -1))
    value = get_loss("kl").function(mean, covariance, target, labels)
    torch.testing.assert_close(value, full_kl - 0.25 * (trace + quadratic), rtol=1e-9, atol=1e-9)


def test_exact_w2_matches_a_scipy_reference() -> None:
    mean, covariance, target = _prediction(CovarianceKind.CHOLESKY)
    labels = _labels_from(_random_spd(BATCH, DIM, seed=8))
    value = wasserstein(mean, covariance, target, labels)
    reference = [
        _w2_reference(m, c, t, lc)
        for m, c, t, lc in zip(
            mean.numpy(),
            covariance.covariance().numpy(),
            target.numpy(),
            labels.covariance.numpy(),
            strict=True,
        )
    ]
    torch.testing.assert_close(value, torch.tensor(reference, dtype=torch.float64), rtol=1e-7, atol=1e-7)


def test_w2_bound_with_the_sqrt_factor_matches_its_formula() -> None:
    mean, covariance, target = _prediction(CovarianceKind.SQRT)
    labels = _labels_from(_random_spd(BATCH, DIM, seed=9))
    predicted_root = np.stack([np.real(scipy.linalg.sqrtm(c)) for c in covariance.covariance().numpy()])
    expected = ((target - mean) ** 2).sum(dim=-1).numpy() + ((predicted_root - labels.root.numpy()) ** 2).sum(
        axis=(1, 2)
    )
    value = wasserstein_bound(mean, covariance, target, labels)
    torch.testing.assert_close(value, torch.from_numpy(expected), rtol=1e-7, atol=1e-7)


def test_w2_bound_with_the_cholesky_factor_matches_its_formula() -> None:
    mean, covariance, target = _prediction(CovarianceKind.CHOLESKY)
    labels = _labels_from(_random_spd(BATCH, DIM, seed=9))
    predicted_factor = np.linalg.cholesky(covariance.covariance().numpy())
    label_factor = np.linalg.cholesky(labels.covariance.numpy())
    expected = ((target - mean) ** 2).sum(dim=-1).numpy() + ((predicted_factor - label_factor) ** 2).sum(
        axis=(1, 2)
    )
    value = wasserstein_bound(mean, covariance, target, labels)
    torch.testing.assert_close(value, torch.from_numpy(expected), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("kind", [CovarianceKind.CHOLESKY, CovarianceKind.SQRT])
def test_w2_bound_vanishes_exactly_when_the_prediction_equals_the_label(kind: CovarianceKind) -> None:
    """With a factor of the same form on both sides, ``Σ̂ = Σ̃`` is the bound's minimum (zero); a Cholesky
    prediction against the label's symmetric root would be ``‖L − Σ̃^{½}‖²_F > 0`` there instead."""
    label = _random_spd(BATCH, DIM, seed=11)
    labels = _labels_from(label)
    zeros = torch.zeros(BATCH, DIM, dtype=torch.float64)
    factored = (
        TriangularCovariance(torch.linalg.cholesky(label))
        if kind is CovarianceKind.CHOLESKY
        else SymmetricRootCovariance(labels.root)
    )
    at_label = wasserstein_bound(zeros, factored, zeros, labels)
    torch.testing.assert_close(at_label, torch.zeros(BATCH, dtype=torch.float64), rtol=0.0, atol=1e-20)
    mixed_forms = (torch.linalg.cholesky(label) - labels.root).square().sum(dim=(-2, -1))
    assert (mixed_forms > 1e-3).all()
    shifted = type(factored)(factored.factor * 1.01)
    assert (wasserstein_bound(zeros, shifted, zeros, labels) > 0.0).all()


@st.composite
def _spd_batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    dim = draw(st.integers(min_value=1, max_value=6))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, 1e2]))
    return scale * _random_spd(64, dim, seed), _random_spd(64, dim, seed + 1)


@settings(max_examples=60, deadline=None)
@given(_spd_batches())
def test_theorem_1_the_bound_is_never_below_exact_w2(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """60 examples × 64 pairs = 3840 random SPD pairs, symmetric-root and Cholesky factors."""
    predicted, label = pair
    labels = _labels_from(label)
    dim = predicted.shape[-1]
    zeros = torch.zeros(predicted.shape[0], dim, dtype=torch.float64)
    exact = wasserstein(zeros, TriangularCovariance(torch.linalg.cholesky(predicted)), zeros, labels)
    tolerance = 1e-8 * (1.0 + exact.abs())
    for factored in (
        SymmetricRootCovariance(symmetric_sqrt(predicted)),
        TriangularCovariance(torch.linalg.cholesky(predicted)),
    ):
        bound = wasserstein_bound(zeros, factored, zeros, labels)
        assert (bound >= exact - tolerance).all(), (bound - exact).min()


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.integers(min_value=0, max_value=2**31 - 1))
def test_theorem_1_equality_for_commuting_covariances(dim: int, seed: int) -> None:
    rotation, _ = torch.linalg.qr(torch.randn(16, dim, dim, dtype=torch.float64, generator=_generator(seed)))
    eigen_a = torch.rand(16, dim, dtype=torch.float64, generator=_generator(seed + 1)) * 5 + 0.1
    eigen_b = torch.rand(16, dim, dtype=torch.float64, generator=_generator(seed + 2)) * 5 + 0.1
    predicted = (rotation * eigen_a.unsqueeze(-2)) @ rotation.mT
    labels = _labels_from((rotation * eigen_b.unsqueeze(-2)) @ rotation.mT)
    root = 0.5 * (symmetric_sqrt(predicted) + symmetric_sqrt(predicted).mT)
    zeros = torch.zeros(16, dim, dtype=torch.float64)
    bound = wasserstein_bound(zeros, SymmetricRootCovariance(root), zeros, labels)
    exact = wasserstein(zeros, TriangularCovariance(torch.linalg.cholesky(predicted)), zeros, labels)
    expected = ((eigen_a.sqrt() - eigen_b.sqrt()) ** 2).sum(dim=-1)
    torch.testing.assert_close(bound, expected, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(exact, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", [CovarianceKind.CHOLESKY, CovarianceKind.SQRT])
def test_w2_bound_gradient_is_finite_where_eigh_w2_is_not(kind: CovarianceKind) -> None:
    """Observed with torch 2.13: for Σ̂ = Σ̃ = I (repeated eigenvalues) exact W2's gradient is all-NaN, and
    for eigenvalues 1e-9 apart it exceeds 1e3 (eigh's backward divides by the gap); the bound's gradient
    is finite."""
    parameterisation = make_parameterisation(kind, 3)
    labels = _labels_from(torch.eye(3, dtype=torch.float64).expand(2, 3, 3).clone())
    zeros = torch.zeros(2, 3, dtype=torch.float64)

    def gradient(loss: str, raw: torch.Tensor) -> torch.Tensor:
        raw = raw.clone().requires_grad_()
        value = get_loss(loss).function(zeros, parameterisation(raw), zeros, labels).sum()
        (grad,) = torch.autograd.grad(value, raw)
        return grad

    identity_raw = torch.zeros(2, parameterisation.raw_size, dtype=torch.float64)
    torch.testing.assert_close(identity_raw, identity_raw)
    exact_repeated = gradient("w2", identity_raw)
    bound_repeated = gradient("w2-bound", identity_raw)
    assert torch.isnan(exact_repeated).all()
    assert torch.isfinite(bound_repeated).all()

    near = identity_raw.clone()
    near[:, 0] = 1e-9
    exact_near = gradient("w2", near)
    bound_near = gradient("w2-bound", near)
    assert (~torch.isfinite(exact_near)).any() or exact_near.abs().max() > 1e3
    assert torch.isfinite(bound_near).all()
    assert bound_near.abs().max() < 10.0


def test_registry_covers_every_name_and_accepts_plain_strings() -> None:
    assert {name.value for name in LossName} == {
        "mse",
        "nll",
        "diagonal",
        "beta-nll",
        "faithful",
        "kl",
        "w2",
        "w2-bound",
        "nll-tic",
    }
    assert get_loss("w2-bound").parameterisation is CovarianceKind.CHOLESKY
    assert get_loss("nll-tic").parameterisation is CovarianceKind.TIC
    assert {n.value for n in LossName if get_loss(n).needs_pseudo_labels} == {"kl", "w2", "w2-bound"}
    with pytest.raises(ValueError, match=r"loss: expected one of mse, nll, .*, got 'w3'"):
        get_loss("w3")


@pytest.mark.parametrize("name", ["kl", "w2", "w2-bound"])
def test_label_losses_name_the_missing_labels(name: str) -> None:
    mean, covariance, target = _prediction(CovarianceKind.CHOLESKY)
    with pytest.raises(ValueError, match=f"labels: the {name} loss needs covariance pseudo-labels"):
        get_loss(name).function(mean, covariance, target, None)

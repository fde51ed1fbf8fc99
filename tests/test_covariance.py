"""Covariance parameterisations: SPD for any raw output, factor, log-det and solves against references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covserve.training.covariance import (
    TAYLOR_CHUNK_ELEMENTS,
    CovarianceKind,
    TaylorTerms,
    make_parameterisation,
    taylor_terms,
    unrolled_cholesky,
)
from covserve.training.losses import wasserstein_bound
from covserve.training.networks import ResidualMLP
from covserve.training.pseudolabels import PseudoLabels

DIMENSIONS = (1, 2, 3, 5, 8, 16)
BATCH = 64
PATTERNS = ("normal", "normal3", "plus", "minus", "signs", "huge")
EXTREME = 1e4


def _raw(pattern: str, batch: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(PATTERNS.index(pattern))
    normal = torch.randn(batch, size, generator=generator, dtype=dtype)
    return {
        "normal": normal,
        "normal3": 3.0 * normal,
        "plus": torch.full((batch, size), EXTREME, dtype=dtype),
        "minus": torch.full((batch, size), -EXTREME, dtype=dtype),
        "signs": EXTREME * torch.sign(normal),
        "huge": EXTREME * normal,
    }[pattern]


def _small_mean_network(in_dim: int, out_dim: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_dim, 8), nn.Tanh(), nn.Linear(8, out_dim)).double()


def _taylor(dim: int, batch: int, dtype: torch.dtype) -> TaylorTerms:
    network = _small_mean_network(3, dim).to(dtype)
    inputs = torch.randn(batch, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return taylor_terms(network, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dim", DIMENSIONS)
@pytest.mark.parametrize("kind", list(CovarianceKind))
def test_every_parameterisation_is_spd_for_any_raw_output(
    kind: CovarianceKind, dim: int, pattern: str, dtype: torch.dtype
) -> None:
    parameterisation = make_parameterisation(kind, dim)
    raw = _raw(pattern, BATCH, parameterisation.raw_size, dtype)
    taylor = _taylor(dim, BATCH, dtype) if parameterisation.needs_taylor_terms else None
    result = parameterisation(raw, taylor)
    sigma = result.covariance()

    assert sigma.shape == (BATCH, dim, dim)
    assert sigma.dtype == dtype
    assert torch.isfinite(sigma).all()
    assert torch.equal(sigma, sigma.mT), "covariance must be exactly symmetric"
    as_double = sigma.double()
    assert torch.linalg.eigvalsh(as_double).min() > 0.0
    assert (torch.linalg.cholesky_ex(as_double).info == 0).all()
    reproduced = result.factor @ result.factor.mT
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    scale = sigma.abs().flatten(1).amax(dim=1)[:, None, None]
    assert ((reproduced - sigma).abs() / scale).max() < tolerance
    assert torch.isfinite(result.log_det()).all()


@pytest.mark.parametrize("dim", [1, 3, 6])
@pytest.mark.parametrize("kind", list(CovarianceKind))
def test_log_det_whiten_and_solve_match_dense_linear_algebra(kind: CovarianceKind, dim: int) -> None:
    parameterisation = make_parameterisation(kind, dim)
    raw = _raw("normal", 16, parameterisation.raw_size, torch.float64)
    taylor = _taylor(dim, 16, torch.float64) if parameterisation.needs_taylor_terms else None
    result = parameterisation(raw, taylor)
    sigma = result.covariance()
    rhs = torch.randn(16, dim, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    torch.testing.assert_close(result.log_det(), torch.logdet(sigma), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(result.solve(rhs), torch.linalg.solve(sigma, rhs), rtol=1e-9, atol=1e-9)
    whitened = result.whiten(rhs)
    torch.testing.assert_close(
        whitened.mT @ whitened, rhs.mT @ torch.linalg.solve(sigma, rhs), rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(result.variance(), torch.diagonal(sigma, dim1=-2, dim2=-1))


def test_sqrt_factor_is_the_symmetric_square_root() -> None:
    parameterisation = make_parameterisation("sqrt", 4)
    result = parameterisation(_raw("normal3", 32, parameterisation.raw_size, torch.float64))
    root = result.factor
    assert torch.equal(root, root.mT)
    assert torch.linalg.eigvalsh(root).min() > 0.0
    torch.testing.assert_close(root @ root, result.covariance(), rtol=1e-12, atol=1e-12)


def test_cholesky_and_diagonal_factors_are_lower_triangular_with_positive_diagonal() -> None:
    for kind in ("cholesky", "diagonal", "tic"):
        parameterisation = make_parameterisation(kind, 5)
        taylor = _taylor(5, 8, torch.float64) if parameterisation.needs_taylor_terms else None
        result = parameterisation(_raw("huge", 8, parameterisation.raw_size, torch.float64), taylor)
        assert torch.equal(result.factor, torch.tril(result.factor))
        assert torch.diagonal(result.factor, dim1=-2, dim2=-1).min() > 0.0


def test_diagonal_parameterisation_is_diagonal_with_floor() -> None:
    parameterisation = make_parameterisation(CovarianceKind.DIAGONAL, 3)
    sigma = parameterisation(torch.full((2, 3), -EXTREME)).covariance()
    assert torch.equal(sigma, torch.diag_embed(torch.diagonal(sigma, dim1=-2, dim2=-1)))
    assert torch.diagonal(sigma, dim1=-2, dim2=-1).min() > 0.0


def test_raw_output_gradients_are_finite_at_extremes() -> None:
    for kind in ("cholesky", "sqrt", "diagonal"):
        parameterisation = make_parameterisation(kind, 4)
        raw = _raw("signs", 8, parameterisation.raw_size, torch.float32).requires_grad_()
        result = parameterisation(raw)
        loss = result.log_det().sum() + result.mahalanobis_squared(torch.ones(8, 4)).sum()
        loss.backward()
        assert raw.grad is not None
        assert torch.isfinite(raw.grad).all()


def test_taylor_terms_match_analytic_derivatives() -> None:
    def mean_network(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] ** 2 * x[:, 1], torch.sin(x[:, 1])], dim=1)

    inputs = torch.tensor([[1.0, 2.0], [-0.5, 0.3]], dtype=torch.float64)
    terms = taylor_terms(mean_network, inputs)
    x0, x1 = inputs[:, 0], inputs[:, 1]
    expected_jacobian = torch.stack(
        [torch.stack([2 * x0 * x1, x0**2], dim=1), torch.stack([0 * x0, torch.cos(x1)], dim=1)], dim=1
    )
    hessian_first = torch.stack(
        [torch.stack([2 * x1, 2 * x0], dim=1), torch.stack([2 * x0, 0 * x0], dim=1)], dim=1
    )
    hessian_second = torch.zeros_like(hessian_first)
    hessian_second[:, 1, 1] = -torch.sin(x1)
    hessians = torch.stack([hessian_first, hessian_second], dim=1)
    expected_gram = torch.einsum("bdij,beij->bde", hessians, hessians)
    torch.testing.assert_close(terms.jacobian, expected_jacobian)
    torch.testing.assert_close(terms.hessian_gram, expected_gram)
    assert not terms.jacobian.requires_grad


def test_taylor_terms_of_the_residual_network_match_row_by_row_autograd() -> None:
    torch.manual_seed(3)
    network = ResidualMLP(4, 3, width=16, depth=2).double()
    network(torch.randn(64, 4, dtype=torch.float64))
    network.eval()
    inputs = torch.randn(5, 4, dtype=torch.float64)
    terms = taylor_terms(network, inputs)

    def single(x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = network(x.unsqueeze(0)).squeeze(0)
        return output

    for row, x in enumerate(inputs):
        jacobian = torch.autograd.functional.jacobian(single, x)
        hessians = torch.stack(
            [torch.autograd.functional.hessian(lambda v, d=d: single(v)[d], x) for d in range(3)]
        )
        torch.testing.assert_close(terms.jacobian[row], jacobian)
        torch.testing.assert_close(terms.hessian_gram[row], torch.einsum("dij,eij->de", hessians, hessians))
    assert float(terms.hessian_gram.abs().max()) > 1e-6


def test_taylor_terms_in_chunks_equal_one_pass_and_bound_the_rows_per_pass() -> None:
    torch.manual_seed(4)
    network = ResidualMLP(6, 5, width=16, depth=2).double()
    network(torch.randn(64, 6, dtype=torch.float64))
    network.eval()
    inputs = torch.randn(2 * TAYLOR_CHUNK_ELEMENTS // 30 + 7, 6, dtype=torch.float64)
    rows_seen: list[int] = []

    def recorded(x: torch.Tensor) -> torch.Tensor:
        rows_seen.append(x.shape[0])
        output: torch.Tensor = network(x)
        return output

    default = taylor_terms(recorded, inputs)
    one_pass = taylor_terms(network, inputs, chunk_rows=len(inputs))
    uneven = taylor_terms(network, inputs, chunk_rows=7)
    assert max(rows_seen) == TAYLOR_CHUNK_ELEMENTS // 30 < len(inputs)
    for terms in (default, uneven):
        torch.testing.assert_close(terms.jacobian, one_pass.jacobian, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(terms.hessian_gram, one_pass.hessian_gram, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="chunk_rows"):
        taylor_terms(network, inputs, chunk_rows=0)


@pytest.mark.parametrize("dim", [1, 4, 16])
@pytest.mark.parametrize("kind", list(CovarianceKind))
def test_identity_raw_gives_the_identity_covariance_up_to_the_ridge(kind: CovarianceKind, dim: int) -> None:
    parameterisation = make_parameterisation(kind, dim)
    raw = parameterisation.identity_raw()
    assert raw.shape == (parameterisation.raw_size,)
    flat = TaylorTerms(
        torch.zeros(1, dim, 3, dtype=torch.float64), torch.zeros(1, dim, dim, dtype=torch.float64)
    )
    covariance = parameterisation(raw[None].double(), flat).covariance()[0]
    ridge = 5e-3  # the sqrt head's Σ = (1 + 2e-3)² I
    torch.testing.assert_close(covariance, torch.eye(dim, dtype=torch.float64), rtol=0, atol=ridge)
    assert (covariance.diagonal() >= 1.0).all()


def test_tic_covariance_grows_with_the_mean_network_slope() -> None:
    parameterisation = make_parameterisation(CovarianceKind.TIC, 2)
    raw = torch.zeros(1, parameterisation.raw_size, dtype=torch.float64)
    flat = TaylorTerms(torch.zeros(1, 2, 3, dtype=torch.float64), torch.zeros(1, 2, 2, dtype=torch.float64))
    steep = TaylorTerms(10.0 * torch.ones(1, 2, 3, dtype=torch.float64), flat.hessian_gram)
    steep_variance = parameterisation(raw, steep).variance()
    flat_variance = parameterisation(raw, flat).variance()
    softplus_zero = torch.nn.functional.softplus(torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(
        steep_variance - flat_variance,
        softplus_zero * 300.0 * torch.ones(1, 2, dtype=torch.float64),
        rtol=2e-3,
        atol=0,
    )


def test_training_path_never_calls_an_eigendecomposition() -> None:
    labels_root = torch.eye(3).expand(8, 3, 3)
    labels = PseudoLabels(torch.zeros(8, 3), labels_root, labels_root, torch.zeros(8))
    for kind in ("cholesky", "sqrt", "diagonal"):
        parameterisation = make_parameterisation(kind, 3)
        raw = torch.randn(8, parameterisation.raw_size, requires_grad=True)
        mean = torch.zeros(8, 3, requires_grad=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            result = parameterisation(raw)
            loss = wasserstein_bound(mean, result, torch.ones(8, 3), labels).sum() + result.log_det().sum()
            loss.backward()
        names = {event.key for event in profile.key_averages()}
        assert not {name for name in names if "eig" in name}, names
        assert any("cholesky" in name or "tril" in name or "diag" in name for name in names)


def test_kind_accepts_plain_strings_and_rejects_unknown_names() -> None:
    assert make_parameterisation("sqrt", 2).kind is CovarianceKind.SQRT
    with pytest.raises(ValueError, match=r"kind: expected one of cholesky, sqrt, diagonal, tic, got 'full'"):
        make_parameterisation("full", 2)
    with pytest.raises(ValueError, match="dim: expected a target dimension >= 1, got 0"):
        make_parameterisation("cholesky", 0)


def test_wrong_raw_shape_and_missing_taylor_terms_are_named() -> None:
    parameterisation = make_parameterisation("cholesky", 3)
    with pytest.raises(
        ValueError, match=r"raw: expected shape \(B, 6\) for a cholesky covariance of dimension 3"
    ):
        parameterisation(torch.zeros(4, 5))
    tic = make_parameterisation("tic", 3)
    with pytest.raises(ValueError, match="taylor: the tic parameterisation needs"):
        tic(torch.zeros(4, tic.raw_size))


@pytest.mark.parametrize("dim", [1, 2, 5, 12])
def test_unrolled_cholesky_equals_torch_cholesky(dim: int) -> None:
    factor = torch.randn(16, dim, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim))
    matrix = factor @ factor.mT + 0.1 * torch.eye(dim, dtype=torch.float64)
    torch.testing.assert_close(
        unrolled_cholesky(matrix), torch.linalg.cholesky(matrix), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("kind", ["cholesky", "sqrt", "diagonal"])
def test_exportable_build_gives_the_same_covariance(kind: str) -> None:
    parameterisation = make_parameterisation(kind, 4)
    raw = _raw("normal3", 16, parameterisation.raw_size, torch.float64)
    eager, exportable = parameterisation(raw), parameterisation(raw, exportable=True)
    torch.testing.assert_close(exportable.factor, eager.factor, rtol=1e-10, atol=1e-10)

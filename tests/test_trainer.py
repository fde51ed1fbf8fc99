"""The trainer: divergence handling and the paper's claim that the W2 bound learns covariance faster."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from covserve.training.config import Device, Hybrid, ModelConfig, TrainConfig
from covserve.training.covariance import taylor_terms
from covserve.training.data import DataConfig, Split, load_split
from covserve.training.losses import LossName
from covserve.training.metrics import variance_calibration
from covserve.training.networks import CovarianceModel, Standardisation
from covserve.training.pseudolabels import LabelScheme
from covserve.training.trainer import CHECKPOINT_FILE, TrainingDivergedError, load_checkpoint, score, train
from tests.degenerate_data import constant_target_split

CLAIM_SEEDS = (0, 1, 2)
CLAIM_EPOCHS = 4
NLL_TOLERANCE = 1.5
"""W2-bound's mean KL to the truth must stay below 1.5 times NLL's. Measured (seeds 0-2, 4 epochs, defaults
otherwise): w2-bound 0.160 / 0.106 / 0.170 (mean 0.145), nll 0.124 / 0.098 / 0.112 (mean 0.111)."""
MSE_MARGIN = 0.3
"""...and below 0.3 times MSE's, whose covariance stays at its identity start: 0.857 / 0.446 / 0.886."""


def test_a_non_finite_loss_names_epoch_batch_and_method_and_keeps_a_checkpoint(tmp_path: Path) -> None:
    split = load_split(DataConfig(samples=400))
    config = TrainConfig(lr=1e12, epochs=3, grad_clip=1e30, device=Device.CPU)
    with pytest.raises(TrainingDivergedError, match=r"in epoch 1, batch \d+ with method w2-bound") as error:
        train(split, config, ModelConfig(width=8, depth=1), run_dir=tmp_path, progress=False)
    assert str(tmp_path / CHECKPOINT_FILE) in str(error.value)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["epoch"] == 0
    assert all(
        torch.isfinite(tensor).all() for tensor in checkpoint["model"].values() if tensor.is_floating_point()
    )


def test_a_non_finite_gradient_stops_before_the_step_with_a_clear_error(tmp_path: Path) -> None:
    """On constant targets the exact W2 loss is finite but its gradient is NaN. Before the check, the NaN
    step poisoned the weights and the next batch died in a Cholesky factorisation with a traceback."""
    split = constant_target_split()
    config = TrainConfig(method=LossName.W2, epochs=2, device=Device.CPU)
    with pytest.raises(
        TrainingDivergedError, match=r"non-finite gradient .* in epoch 1, batch 1 with method w2"
    ):
        train(split, config, ModelConfig(width=8, depth=1), run_dir=tmp_path, progress=False)
    checkpoint = load_checkpoint(tmp_path)
    assert all(
        torch.isfinite(tensor).all() for tensor in checkpoint["model"].values() if tensor.is_floating_point()
    )


def _kl_to_truth(method: str, seed: int, run_dir: Path) -> dict[str, float]:
    split = load_split(DataConfig(in_dim=4, out_dim=4, samples=4000, seed=seed))
    config = TrainConfig(
        method=LossName(method),
        labels=LabelScheme.TARGETS,
        epochs=CLAIM_EPOCHS,
        seed=seed,
        device=Device.CPU,
        calibrate=False,
    )
    result = train(split, config, ModelConfig(), run_dir=run_dir / f"{method}-{seed}", progress=False)
    _, _, metrics = score(result.model, split.test, torch.device("cpu"))
    return metrics


@pytest.mark.slow(
    reason="trains NLL and the bound on N = 4000 for three seeds: smaller runs do not separate them"
)
def test_w2_bound_learns_the_true_covariance_nearly_as_well_as_nll(tmp_path: Path) -> None:
    """The paper's method (``targets`` labels). ToSS (Fig. 5) claims that self-supervision with
    pseudo-labels converges faster than likelihood training. On the TIC-TAC generator (4 → 4, N = 4000)
    after 4 epochs the W2-bound model is far closer to the true Σ(x) than MSE's untrained covariance, but
    NLL is closer still on every seed (KL and, on two seeds of three, W2): the claim held here only while
    the covariance network started from PyTorch's random initialisation (bound 0.249 against NLL 0.408),
    which slowed NLL more than the bound. Since both start at Σ = I the bound is the slower one (see
    benchmarks/results/README.md)."""
    results = {
        method: [_kl_to_truth(method, seed, tmp_path) for seed in CLAIM_SEEDS]
        for method in ("w2-bound", "nll", "mse")
    }
    mean_kl = {method: float(np.mean([r["kl_to_truth"] for r in runs])) for method, runs in results.items()}
    mean_w2 = {method: float(np.mean([r["w2_to_truth"] for r in runs])) for method, runs in results.items()}
    assert mean_kl["w2-bound"] < NLL_TOLERANCE * mean_kl["nll"], mean_kl
    assert mean_kl["w2-bound"] < MSE_MARGIN * mean_kl["mse"], mean_kl
    assert mean_w2["w2-bound"] < MSE_MARGIN * mean_w2["mse"], mean_w2


@pytest.mark.parametrize("kind", ["cholesky", "sqrt", "diagonal", "tic"])
def test_a_fresh_model_predicts_the_identity_covariance_for_every_input(kind: str) -> None:
    split = load_split(DataConfig(in_dim=3, out_dim=4, samples=200))
    standardisation = Standardisation.fit(split.train.inputs, split.train.targets)
    model = CovarianceModel(3, 4, kind, standardisation, width=8, depth=1).eval()
    inputs = model.standardise_inputs(torch.as_tensor(split.train.inputs, dtype=torch.float32))
    with torch.no_grad():
        prediction = model.predict(inputs)
        covariance = prediction.covariance.covariance()
    if kind == "tic":  # plus log 2 times the Taylor terms of the (random) mean network, not constant
        taylor = taylor_terms(model.mean_network, inputs)
        covariance = covariance - math.log(2.0) * (taylor.jacobian @ taylor.jacobian.mT + taylor.hessian_gram)
    identity = torch.eye(4).expand_as(covariance)
    torch.testing.assert_close(covariance, identity, rtol=0, atol=5e-3)


COLLAPSE_DIM = 16
COLLAPSE_ROWS = 2000
COLLAPSE_MIN_STANDARD_DEVIATION = 0.1
"""Regression bound for the smallest standard deviation of the predicted covariance (the smallest singular
value of its factor) after two W2-bound epochs at ``D = 16`` on 2 000 rows. Measured (seed 0, test rows,
median): 0.32 for the ``sqrt`` head from the identity start; 0.0015, the ridge, from PyTorch's default
initialisation of the covariance network's output layer."""


def _median_smallest_standard_deviation(split: Split, config: TrainConfig, run_dir: Path) -> float:
    """Train, then the median over the test rows of the prediction's smallest standard deviation (the
    smallest singular value of its covariance factor)."""
    model = train(split, config, ModelConfig(), run_dir=run_dir, progress=False).model.eval()
    inputs = model.standardise_inputs(torch.as_tensor(split.test.inputs, dtype=torch.float32))
    with torch.no_grad():
        factor = model.predict(inputs).covariance.factor
    return float(torch.linalg.svdvals(factor.double())[:, -1].median())


def test_the_w2_bound_keeps_every_direction_at_dimension_16(tmp_path: Path) -> None:
    """Regression: from a random start (Σ eigenvalues up to 29) the first epochs of the W2 bound shrank the
    ``sqrt`` head's factor ``C`` past rank ``D − 1``; ``S = ridge(C Cᵀ)`` then sat at the ridge in that
    direction and training never brought it back (KL to the truth 26 110 in one benchmark trial at full
    size). The registered ``cholesky`` head keeps every direction here too."""
    split = load_split(DataConfig(in_dim=COLLAPSE_DIM, out_dim=COLLAPSE_DIM, samples=COLLAPSE_ROWS, seed=0))
    config = TrainConfig(
        method=LossName.W2_BOUND, labels=LabelScheme.TARGETS, epochs=2, device=Device.CPU, calibrate=False
    )
    smallest = _median_smallest_standard_deviation(split, config, tmp_path)
    assert smallest > COLLAPSE_MIN_STANDARD_DEVIATION, smallest


BENCHMARK_CELL_ROWS = 16_000
BENCHMARK_CELL_LR = 1e-3
"""The synthetic benchmark's D = 16 cell: 1 000·D rows and its learning rate. Measured after the first epoch
(seed 0, test rows, median smallest standard deviation, the same with one and two torch threads): 0.29
with the Cholesky bound; 0.0016, the ridge, with the ``sqrt`` head, which never left it (KL to the truth
40 250 after 20 epochs in the benchmark)."""


@pytest.mark.slow(reason="the benchmark cell's own size (D = 16) is what the test is about")
def test_the_w2_bound_keeps_every_direction_in_the_benchmark_cell_at_dimension_16(tmp_path: Path) -> None:
    """Regression for the collapse the Cholesky bound fixed: the ``sqrt`` head lost a direction in this
    cell's first epoch (at the trainer's default learning rate, 3e-4, it did not within 20 epochs)."""
    data = DataConfig(in_dim=COLLAPSE_DIM, out_dim=COLLAPSE_DIM, samples=BENCHMARK_CELL_ROWS, seed=0)
    split = load_split(data)
    config = TrainConfig(
        method=LossName.W2_BOUND,
        labels=LabelScheme.TARGETS,
        epochs=1,
        lr=BENCHMARK_CELL_LR,
        device=Device.CPU,
        calibrate=False,
    )
    smallest = _median_smallest_standard_deviation(split, config, tmp_path)
    assert smallest > COLLAPSE_MIN_STANDARD_DEVIATION, smallest


def test_hybrid_trains_the_bound_first_then_the_method_on_its_parameterisation(tmp_path: Path) -> None:
    split = load_split(DataConfig(samples=400))
    config = TrainConfig(method=LossName.NLL, hybrid_epochs=1, epochs=2, device=Device.CPU)
    result = train(split, config, ModelConfig(width=8, depth=1), run_dir=tmp_path, progress=False)
    assert result.model.kind.value == "cholesky"
    assert len(result.history) == 2
    assert all(np.isfinite(record["train_loss"]) for record in result.history)


def test_the_hybrid_method_trains_the_bound_for_half_of_the_epochs_then_nll(tmp_path: Path) -> None:
    assert TrainConfig(method=Hybrid.HYBRID, epochs=7).bound_epochs == 3
    assert TrainConfig(method=Hybrid.HYBRID, epochs=7, hybrid_epochs=5).bound_epochs == 5
    assert TrainConfig(method=LossName.NLL, epochs=7).bound_epochs == 0
    split = load_split(DataConfig(samples=400))
    hybrid = TrainConfig(method=Hybrid.HYBRID, epochs=2, device=Device.CPU, calibrate=False)
    bound = hybrid.model_copy(update={"method": LossName.W2_BOUND})
    small = ModelConfig(width=8, depth=1)
    result = train(split, hybrid, small, run_dir=tmp_path / "hybrid", progress=False)
    reference = train(split, bound, small, run_dir=tmp_path / "bound", progress=False)
    assert result.model.kind.value == "cholesky"
    # the same first epoch as the bound alone (same weights, batches and labels), then another loss
    assert result.history[0]["train_loss"] == reference.history[0]["train_loss"]
    assert result.history[1]["train_loss"] != reference.history[1]["train_loss"]


def test_calibration_scales_the_raw_covariance_by_the_validation_optimum(tmp_path: Path) -> None:
    split = load_split(DataConfig(in_dim=2, out_dim=2, samples=600, seed=3))
    model = ModelConfig(width=8, depth=1)
    on = TrainConfig(epochs=2, device=Device.CPU, seed=3)
    calibrated = train(split, on, model, run_dir=tmp_path / "on", progress=False)
    off = on.model_copy(update={"calibrate": False})
    plain = train(split, off, model, run_dir=tmp_path / "off", progress=False)
    factor = calibrated.covariance_calibration
    assert plain.covariance_calibration == 1.0
    assert float(calibrated.model.covariance_calibration) == pytest.approx(factor, rel=1e-6)
    device = torch.device("cpu")
    mean_on, covariance_on, validation_on = score(calibrated.model, split.validation, device)
    mean_off, covariance_off, validation_off = score(plain.model, split.validation, device)
    np.testing.assert_allclose(mean_on, mean_off, rtol=1e-6)
    np.testing.assert_allclose(covariance_on, factor * covariance_off, rtol=1e-4)
    assert validation_on["nll"] <= validation_off["nll"]
    assert variance_calibration(mean_on, covariance_on, split.validation.targets) == pytest.approx(
        1.0, rel=1e-3
    )


def test_early_stopping_watches_the_nll_the_exported_model_will_have(tmp_path: Path) -> None:
    """With calibration on, the best epoch is the one with the best NLL after the variance scale."""
    split = load_split(DataConfig(in_dim=2, out_dim=2, samples=600, seed=4))
    on = TrainConfig(method=LossName.W2_BOUND, epochs=4, device=Device.CPU, seed=4)
    calibrated = train(split, on, ModelConfig(width=8, depth=1), run_dir=tmp_path / "on", progress=False)
    scores = [record["val_nll_calibrated"] for record in calibrated.history]
    assert calibrated.best_epoch == 1 + int(np.argmin(scores))
    assert all(score <= record["val_nll"] for score, record in zip(scores, calibrated.history, strict=True))
    off = on.model_copy(update={"calibrate": False})
    plain = train(split, off, ModelConfig(width=8, depth=1), run_dir=tmp_path / "off", progress=False)
    assert all("val_nll_calibrated" not in record for record in plain.history)
    assert plain.best_epoch == 1 + int(np.argmin([record["val_nll"] for record in plain.history]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (ran on an H200: see gpu/)")
def test_the_w2_bound_trains_on_cuda_with_labels_computed_on_the_gpu(tmp_path: Path) -> None:
    """Regression: the pseudo-labels were computed from CPU tensors against a model already on the GPU,
    so ``--device cuda`` with any label loss stopped with a device-mismatch RuntimeError."""
    split = load_split(DataConfig(samples=400))
    config = TrainConfig(method=LossName.W2_BOUND, epochs=1, device=Device.CUDA)
    result = train(split, config, ModelConfig(width=8, depth=1), run_dir=tmp_path, progress=False)
    assert result.device.startswith("cuda")
    assert np.isfinite(result.history[0]["train_loss"])


def test_a_column_of_one_large_value_is_not_standardised_into_noise() -> None:
    values = np.column_stack([np.arange(20.0), np.full(20, 1e6 + 0.1)])
    assert np.std(values[:, 1]) > 1e-12  # the absolute floor alone would divide noise by noise
    stats = Standardisation.fit(values, values)
    np.testing.assert_array_equal(stats.input_std[1], 1.0)

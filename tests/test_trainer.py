"""The trainer: divergence handling and the paper's claim that the W2 bound learns covariance faster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import Device, ModelConfig, TrainConfig
from training.data import DataConfig, load_split
from training.losses import LossName
from training.metrics import variance_calibration
from training.trainer import CHECKPOINT_FILE, TrainingDivergedError, load_checkpoint, score, train

CLAIM_SEEDS = (0, 1, 2)
CLAIM_EPOCHS = 4
CLAIM_MARGIN = 0.85
"""W2-bound's mean KL must be below 85 % of NLL's. Measured (seeds 0-2, 4 epochs, defaults otherwise):
w2-bound 0.267 / 0.179 / 0.301 (mean 0.249), nll 0.318 / 0.700 / 0.206 (mean 0.408)."""


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


def _kl_to_truth(method: str, seed: int, run_dir: Path) -> dict[str, float]:
    split = load_split(DataConfig(in_dim=4, out_dim=4, samples=4000, seed=seed))
    config = TrainConfig(
        method=LossName(method), epochs=CLAIM_EPOCHS, seed=seed, device=Device.CPU, calibrate=False
    )
    result = train(split, config, ModelConfig(), run_dir=run_dir / f"{method}-{seed}", progress=False)
    _, _, metrics = score(result.model, split.test, torch.device("cpu"))
    return metrics


@pytest.mark.slow
def test_w2_bound_learns_the_true_covariance_faster_than_nll_and_mse(tmp_path: Path) -> None:
    """ToSS (Fig. 5): self-supervision with pseudo-labels converges faster than likelihood training. On the
    TIC-TAC generator (4 → 4, N = 4000) after 4 epochs (400 steps at the paper's lr 3e-4, batch 32) the
    W2-bound model is closer to the true Σ(x) than NLL (mean KL over three seeds, with a margin) and far
    closer than MSE, whose covariance is never trained. With 8 epochs at lr 1e-3 the KL gap narrows to
    about 10 % (0.151 against 0.167) and one seed of three favours NLL; the W2 distance still favours the
    bound on every seed."""
    results = {
        method: [_kl_to_truth(method, seed, tmp_path) for seed in CLAIM_SEEDS]
        for method in ("w2-bound", "nll", "mse")
    }
    mean_kl = {method: float(np.mean([r["kl_to_truth"] for r in runs])) for method, runs in results.items()}
    assert mean_kl["w2-bound"] < CLAIM_MARGIN * mean_kl["nll"], mean_kl
    assert mean_kl["w2-bound"] < CLAIM_MARGIN * mean_kl["mse"], mean_kl
    for bound, nll in zip(results["w2-bound"], results["nll"], strict=True):
        assert bound["w2_to_truth"] < nll["w2_to_truth"]


def test_hybrid_trains_the_bound_first_then_the_method_on_its_parameterisation(tmp_path: Path) -> None:
    split = load_split(DataConfig(samples=400))
    config = TrainConfig(method=LossName.NLL, hybrid_epochs=1, epochs=2, device=Device.CPU)
    result = train(split, config, ModelConfig(width=8, depth=1), run_dir=tmp_path, progress=False)
    assert result.model.kind.value == "cholesky"
    assert len(result.history) == 2
    assert all(np.isfinite(record["train_loss"]) for record in result.history)


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

"""Data-parallel training: two gloo ranks on 127.0.0.1 against one process, through the real ``torchrun``."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import start_processes

from covserve.training import trainer
from covserve.training.cli import main
from covserve.training.config import Device, ModelConfig, RunConfig, TrainConfig
from covserve.training.covariance import FactoredCovariance
from covserve.training.data import DataConfig, load_split
from covserve.training.distributed import Ranks
from covserve.training.errors import TrainingDivergedError, TrainingInterruptedError
from covserve.training.losses import LossName, LossSpec
from covserve.training.pipeline import fit, start_run
from covserve.training.pseudolabels import PseudoLabels

EPOCHS = 4
DATA = ["--data", "synthetic", "--in-dim", "3", "--out-dim", "2", "--samples", "1500"]
TRAINING = ["--epochs", str(EPOCHS), "--batch-size", "32", "--width", "16", "--depth", "1", "--device", "cpu"]
VALIDATION_NLL_TOLERANCE = 3e-3
"""Two ranks sum each half of a batch's loss, average the gradients, and take the batch normalisation's
statistics from an all-reduced sum and sum of squares; one process takes the batch's mean and Welford's
variance: the same arithmetic in another order and in float32. Measured after 4 epochs: training losses
agree to 2e-5, validation NLLs (through the running statistics) to 1.3e-3; one epoch of training changes
the validation NLL by 0.03 to 0.2 here, and per-rank batch statistics (plain DDP) moved the training loss
by 1.2 % in the first epoch."""
TRAIN_LOSS_RTOL = 1e-4
RUN_SECONDS = 240
"""A bound on each launch, so a hang fails the test instead of stalling CI."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _outputs(root: Path) -> list[str]:
    return ["--repository", str(root / "models"), "--run-dir", str(root / "runs"), "--no-progress"]


def _torchrun(arguments: list[str], ranks: int = 2) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "covserve.training", *arguments,
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_SECONDS, check=False, env=environment
    )


def _history(root: Path, key: str) -> list[float]:
    (run,) = (root / "runs").iterdir()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[key] for line in lines]


def _versions(root: Path) -> list[str]:
    return sorted(path.name for path in (root / "models" / "synthetic").iterdir())


@pytest.mark.slow(reason="three trainings, two of them through torchrun's two ranks (torch imported 5 times)")
def test_two_ranks_agree_with_one_process_fresh_and_resumed_and_publish_one_version(tmp_path: Path) -> None:
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    assert main(["fit", *DATA, *TRAINING, *_outputs(one)]) == 0

    launched = _torchrun(["fit", *DATA, *TRAINING, *_outputs(two)])
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("published ") == 1, "only rank 0 reports and publishes"

    config = RunConfig(
        repository=resumed / "models",
        run_dir=resumed / "runs",
        data=DataConfig(in_dim=3, out_dim=2, samples=1500),
        model=ModelConfig(width=16, depth=1),
        train=TrainConfig(epochs=EPOCHS, batch_size=32, device=Device.CPU),
    )
    run = start_run(config)

    def interrupt_after_two(record: dict[str, float]) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterruptedError):
        fit(config, load_split(config.data), run, progress=False, on_epoch=interrupt_after_two)
    continued = _torchrun(["fit", "--resume", str(run.path), "--no-progress"])
    assert continued.returncode == 0, continued.stderr[-3000:]

    reference = _history(one, "val_nll")
    assert len(reference) == EPOCHS
    for root in (two, resumed):
        assert _history(root, "val_nll") == pytest.approx(reference, abs=VALIDATION_NLL_TOLERANCE)
        assert _history(root, "train_loss") == pytest.approx(_history(one, "train_loss"), rel=TRAIN_LOSS_RTOL)
        assert _versions(root) == ["1"]
        (run_dir,) = (root / "runs").iterdir()
        assert json.loads((run_dir / "report.json").read_text())["epochs_run"] == EPOCHS
    assert _history(two, "val_nll") != reference, "the ranks should not silently run one process's arithmetic"


def _poisoned(spec: LossSpec) -> LossSpec:
    def function(
        mean: torch.Tensor, covariance: FactoredCovariance, target: torch.Tensor, labels: PseudoLabels | None
    ) -> torch.Tensor:
        return spec.function(mean, covariance, target, labels) * float("nan")

    return LossSpec(spec.name, function, spec.parameterisation, spec.needs_pseudo_labels)


def _diverging_rank(rank: int, port: int, run_dir: str, outcomes: dict[int, str]) -> None:
    """Rank 1's loss is NaN from its first batch; rank 0's is finite."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    if rank == 1:
        phase = trainer._phase_loss
        trainer._phase_loss = lambda config, epoch: _poisoned(phase(config, epoch))
    split = load_split(DataConfig(samples=400))
    config = TrainConfig(method=LossName.NLL, epochs=2, device=Device.CPU)
    try:
        trainer.train(
            split,
            config,
            ModelConfig(width=8, depth=1),
            run_dir=Path(run_dir),
            progress=False,
            ranks=Ranks(rank, 2),
        )
        outcomes[rank] = "finished"
    except TrainingDivergedError as error:
        outcomes[rank] = str(error)
    finally:
        dist.destroy_process_group()


def test_a_rank_whose_loss_diverges_stops_every_rank_with_the_usual_message(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Manager() as manager:
        outcomes = manager.dict()
        start_processes(
            _diverging_rank, args=(_free_port(), str(tmp_path), outcomes), nprocs=2, start_method="spawn"
        )
        result = dict(outcomes)
    for rank in (0, 1):
        assert result[rank].startswith("non-finite loss (nan) in epoch 1, batch 1 with method nll"), result
    assert str(tmp_path / trainer.CHECKPOINT_FILE) in result[0]


def test_a_share_of_rows_partitions_them() -> None:
    shares = [Ranks(rank, 3).share(10) for rank in range(3)]
    assert [(piece.start, piece.stop) for piece in shares] == [(0, 3), (3, 6), (6, 10)]
    assert Ranks().share(10) == slice(0, 10)

"""The training loop: AdamW, ReduceLROnPlateau, early stopping, atomic resumable checkpoints.

One call of :func:`train` fits a :class:`CovarianceModel` on a :class:`Split`. It writes nothing but its
checkpoint; the run directory's reports and plots are written by :mod:`training.runs`.
"""

from __future__ import annotations

import copy
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from covserve.training.atomic import write_atomically
from covserve.training.config import Device, Hybrid, ModelConfig, TrainConfig
from covserve.training.data import Split, Table
from covserve.training.distributed import SINGLE, Ranks, share_batch_statistics
from covserve.training.errors import TrainingDivergedError, TrainingInterruptedError, UsageError
from covserve.training.labelling import RunLabels
from covserve.training.losses import LossName, LossSpec, get_loss
from covserve.training.metrics import calibrated_gaussian_nll, compute_metrics, variance_calibration
from covserve.training.neighbour_search import SearchReport
from covserve.training.networks import CovarianceModel, Prediction, Standardisation
from covserve.training.pseudolabels import PseudoLabels

__all__ = [
    "CHECKPOINT_FILE",
    "MAX_EPOCHS",
    "TrainingDivergedError",
    "TrainingInterruptedError",
    "TrainingResult",
    "build_model",
    "calibrate",
    "load_checkpoint",
    "predict_raw",
    "process_peak_rss_mib",
    "resolve_device",
    "score",
    "train",
    "uses_pseudo_labels",
]

CHECKPOINT_FILE = "checkpoint.pt"
MAX_EPOCHS = "max epochs"
"""``TrainingResult.stopped`` when every epoch ran (otherwise the early-stopping reason)."""
LR_FACTOR = 0.25
LR_PATIENCE = 10
MIN_LR = 1e-6
PREDICTION_CHUNK = 4096
MEMORY_POLL_SECONDS = 0.01
BYTES_PER_MIB = 1 << 20
KIB_PER_MIB = 1 << 10


@dataclass
class TrainingResult:
    """What :func:`train` returns. ``model`` holds the best weights (lowest validation criterion)."""

    model: CovarianceModel
    history: list[dict[str, float]]
    best_epoch: int
    stopped: str
    seconds_per_epoch: float
    peak_memory_mib: float
    """Memory the training loop added: peak RSS growth over the loop on CPU (sampled), peak allocated
    device memory on CUDA; MiB. Not the process's footprint: see ``process_peak_rss_mib``."""
    checkpoint: Path
    device: str
    covariance_calibration: float = 1.0
    process_peak_rss_mib: float = 0.0
    """Peak resident set of the whole process so far (``getrusage`` ``ru_maxrss``: imports, data, every
    fit in it), MiB: what ``/usr/bin/time -v`` reports as maximum resident set size."""
    neighbour_search: SearchReport | None = None
    """How the pseudo-labels' neighbours were found (``None``: no epoch trained on pseudo-labels)."""
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: Device, ranks: Ranks = SINGLE) -> torch.device:
    """``auto`` → CUDA if available else CPU; ``cuda`` without a GPU is a :class:`UsageError`. A rank of a
    distributed run uses the GPU of its local rank."""
    if device is Device.CUDA and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if device is Device.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ranks.local_rank) if ranks.distributed else torch.device("cuda")


def _phase_loss(config: TrainConfig, epoch: int) -> LossSpec:
    """The loss of ``epoch`` (0-based): the W2 bound for the first ``bound_epochs``, then ``method`` (NLL
    for the hybrid, and for ``w2-bound`` with ``hybrid_epochs``)."""
    if epoch < config.bound_epochs:
        return get_loss(LossName.W2_BOUND)
    if config.method is Hybrid.HYBRID or (config.bound_epochs and config.method is LossName.W2_BOUND):
        return get_loss(LossName.NLL)
    return get_loss(config.method)


def _parameterisation_spec(config: TrainConfig) -> LossSpec:
    return _phase_loss(config, config.epochs - 1)


CALIBRATED_NLL = "nll_calibrated"


def _criterion(config: TrainConfig) -> str:
    """What early stopping and the learning-rate schedule watch on the validation rows.

    ``mse`` for ``mse`` (its covariance is never trained). Otherwise the NLL of the model as it will be
    exported: with ``calibrate`` on, the NLL after the optimal variance scale (``nll_calibrated``), because
    the exported covariances get that scale; raw NLL would stop the W2 losses, whose covariances follow the
    pseudo-labels and are over-confident by a large factor until calibration, after an epoch or two.
    """
    if _parameterisation_spec(config).name is LossName.MSE:
        return "mse"
    return CALIBRATED_NLL if config.calibrate else "nll"


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    write_atomically(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train`; :class:`UsageError` naming the file when unreadable."""
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such checkpoint") from None
    except Exception as error:  # torch.load raises many types for a corrupt file
        raise UsageError(f"{path}: not a readable covserve checkpoint ({error})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UsageError(f"{path}: not a covserve checkpoint")
    return state


def _peak_memory_mib(memory: _PeakMemory, device: torch.device) -> float:
    """Peak memory of the training loop: allocated device memory on CUDA, RSS growth on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
    return memory.peak


def process_peak_rss_mib() -> float:
    """Peak resident set size of this process since it started, in MiB (``ru_maxrss`` is in KiB on Linux
    and in bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (BYTES_PER_MIB if sys.platform == "darwin" else KIB_PER_MIB)


class _PeakMemory:
    """Peak resident-set growth of this process while the context is open (sampled, MiB)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._baseline = self._rss()

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / BYTES_PER_MIB

    def _poll(self) -> None:
        while not self._stop.wait(MEMORY_POLL_SECONDS):
            self.peak = max(self.peak, self._rss() - self._baseline)

    def __enter__(self) -> _PeakMemory:
        if os.path.exists("/proc/self/statm"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def predict_raw(
    model: CovarianceModel, inputs: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Raw-unit ``mean (N, D)`` and ``covariance (N, D, D)`` (float64) in eval mode, chunked."""
    model.eval()
    means, covariances = [], []
    with torch.no_grad():
        for start in range(0, len(inputs), PREDICTION_CHUNK):
            batch = torch.as_tensor(
                inputs[start : start + PREDICTION_CHUNK], dtype=torch.float32, device=device
            )
            mean, covariance, _ = model(batch)
            means.append(mean.double().cpu().numpy())
            covariances.append(covariance.double().cpu().numpy())
    return np.concatenate(means), np.concatenate(covariances)


def _predict_shared(
    model: CovarianceModel, inputs: np.ndarray, device: torch.device, ranks: Ranks
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_raw` of every row of ``inputs``, each rank predicting its share; every rank gets all."""
    if not ranks.distributed:
        return predict_raw(model, inputs, device)
    shares = ranks.gather(predict_raw(model, inputs[ranks.share(len(inputs))], device))
    return np.concatenate([mean for mean, _ in shares]), np.concatenate([cov for _, cov in shares])


def score(
    model: CovarianceModel, table: Table, device: torch.device, ranks: Ranks = SINGLE
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Raw-unit predictions on ``table`` and their metrics (with KL/W2 to the truth where it is known);
    over ``ranks``, each predicts its share of the rows and every rank gets the same scores."""
    mean, covariance = _predict_shared(model, table.inputs, device, ranks)
    metrics = compute_metrics(
        mean, covariance, table.targets, true_mean=table.true_mean, true_covariance=table.true_covariance
    )
    return mean, covariance, metrics


def build_model(split: Split, config: TrainConfig, model_config: ModelConfig) -> CovarianceModel:
    """A freshly initialised model for ``split`` (weights from ``config.seed``)."""
    torch.manual_seed(config.seed)
    standardisation = Standardisation.fit(split.train.inputs, split.train.targets)
    return CovarianceModel(
        split.train.inputs.shape[1],
        split.train.targets.shape[1],
        _parameterisation_spec(config).parameterisation,
        standardisation,
        width=model_config.width,
        depth=model_config.depth,
    )


def uses_pseudo_labels(config: TrainConfig) -> bool:
    """Whether any epoch's loss trains on pseudo-labels (so ``config.labels`` matters)."""
    return any(_phase_loss(config, epoch).needs_pseudo_labels for epoch in (0, config.epochs - 1))


def _run_labels(model: CovarianceModel, table: Table, config: TrainConfig, ranks: Ranks) -> RunLabels | None:
    """The run's pseudo-labels when any epoch's loss needs them, keeping the parts those losses read; else
    ``None``."""
    if not uses_pseudo_labels(config):
        return None
    parts = frozenset().union(*(_phase_loss(config, epoch).label_parts for epoch in (0, config.epochs - 1)))
    return RunLabels.build(model, table, config, parts, ranks)


def train(
    split: Split,
    config: TrainConfig,
    model_config: ModelConfig,
    *,
    run_dir: Path,
    resume: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_search: Callable[[SearchReport], None] | None = None,
    ranks: Ranks = SINGLE,
) -> TrainingResult:
    """Fit a model on ``split.train``, early-stopping on ``split.validation``; checkpoint every epoch.

    ``on_epoch`` sees every epoch's record, ``on_search`` how the pseudo-labels' neighbours were found
    (before the first epoch). Over several ``ranks`` (:mod:`covserve.training.distributed`) each rank
    trains on its share of every batch under ``DistributedDataParallel``, the validation rows are scored
    in shares and gathered so every rank takes the same schedule and stopping decisions, and only rank 0
    writes the checkpoint.

    ``resume`` is a checkpoint from :func:`load_checkpoint`; training continues from its last completed
    epoch with the same batches, so the result equals an uninterrupted run. Raises
    :class:`TrainingDivergedError` or :class:`TrainingInterruptedError`.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(split, config, model_config, run_dir, resume, progress, on_epoch, on_search, ranks)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    split: Split,
    config: TrainConfig,
    model_config: ModelConfig,
    run_dir: Path,
    resume: dict[str, Any] | None,
    progress: bool,
    on_epoch: Callable[[dict[str, float]], None] | None,
    on_search: Callable[[SearchReport], None] | None,
    ranks: Ranks,
) -> TrainingResult:
    device = resolve_device(config.device, ranks)
    if len(split.validation) == 0:
        raise UsageError("--validation-fraction must be > 0: early stopping needs validation rows")
    if config.batch_size < ranks.world:
        raise UsageError(
            f"--batch-size {config.batch_size} is below the {ranks.world} ranks: each needs rows"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    model = build_model(split, config, model_config).to(device)
    labels = _run_labels(model, split.train, config, ranks)
    step = _Step(model, ranks)
    if labels is not None and labels.search is not None and on_search is not None:
        on_search(labels.search)
    inputs = model.standardise_inputs(torch.as_tensor(split.train.inputs, dtype=torch.float32, device=device))
    targets = model.standardise_targets(
        torch.as_tensor(split.train.targets, dtype=torch.float32, device=device)
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, factor=LR_FACTOR, patience=LR_PATIENCE, min_lr=MIN_LR
    )
    batches = torch.Generator().manual_seed(config.seed)
    criterion = _criterion(config)
    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(model.state_dict())
    best_value, best_epoch, bad_epochs, start_epoch = math.inf, 0, 0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        scheduler.load_state_dict(resume["scheduler"])
        batches.set_state(resume["batch_rng"])
        torch.set_rng_state(resume["torch_rng"])
        history = list(resume["history"])
        best_state, best_value = resume["best_model"], resume["best_value"]
        best_epoch, bad_epochs, start_epoch = resume["best_epoch"], resume["bad_epochs"], resume["epoch"]
        if labels is not None:
            labels.restore(resume.get("label_predictions"))

    def save(epoch: int) -> None:
        if not ranks.main:
            return
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "batch_rng": batches.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best_model": best_state,
                "best_value": best_value,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "epoch": epoch,
                "label_predictions": None if labels is None else labels.predictions,
                "train_config": config.model_dump(mode="json"),
                "model_config": model_config.model_dump(mode="json"),
                "kind": model.kind.value,
                "dims": [inputs.shape[1], targets.shape[1]],
                "standardisation": {
                    name: getattr(model, name).cpu().numpy()
                    for name in ("input_mean", "input_std", "target_mean", "target_std")
                },
            },
            checkpoint_path,
        )

    if resume is None:
        save(0)
    stopped = MAX_EPOCHS
    epoch_seconds: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _PeakMemory() as memory:
        completed = start_epoch
        try:
            for epoch in range(start_epoch, config.epochs):
                spec = _phase_loss(config, epoch)
                started = time.perf_counter()
                label_seconds = (
                    labels.update(model, inputs, epoch)
                    if labels is not None and spec.needs_pseudo_labels
                    else 0.0
                )
                train_loss = _train_epoch(
                    step,
                    optimiser,
                    spec,
                    inputs,
                    targets,
                    labels.current if labels is not None else None,
                    batches,
                    config,
                    epoch,
                    progress and ranks.main,
                )
                epoch_seconds.append(time.perf_counter() - started)
                mean, covariance, validation = score(model, split.validation, device, ranks)
                if criterion == CALIBRATED_NLL:
                    validation[CALIBRATED_NLL] = calibrated_gaussian_nll(
                        mean, covariance, split.validation.targets
                    )
                scheduler.step(validation[criterion])
                record = {
                    "epoch": float(epoch + 1),
                    "train_loss": train_loss,
                    **{f"val_{key}": value for key, value in validation.items() if key != "samples"},
                    "lr": float(optimiser.param_groups[0]["lr"]),
                    "seconds": epoch_seconds[-1],
                }
                if labels is not None and labels.refreshes:
                    record["label_seconds"] = label_seconds
                history.append(record)
                if validation[criterion] < best_value:
                    best_value, best_epoch, bad_epochs = validation[criterion], epoch + 1, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_epochs += 1
                save(epoch + 1)
                completed = epoch + 1
                if on_epoch is not None:
                    on_epoch(record)
                if bad_epochs >= config.patience:
                    stopped = (
                        f"early stopping: validation {criterion} did not improve for {config.patience} epochs"
                    )
                    break
        except TrainingDivergedError as error:
            raise TrainingDivergedError(
                f"{error}; the last good checkpoint (after epoch {completed}) is {checkpoint_path}"
            ) from None
        except KeyboardInterrupt:
            raise TrainingInterruptedError(
                f"interrupted after epoch {completed}; its checkpoint is {checkpoint_path} "
                f"(continue with --resume {run_dir})"
            ) from None
    model.load_state_dict(best_state)
    factor = calibrate(model, split.validation, device, ranks) if config.calibrate else 1.0
    return TrainingResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        stopped=stopped,
        seconds_per_epoch=float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
        peak_memory_mib=_peak_memory_mib(memory, device),
        process_peak_rss_mib=process_peak_rss_mib(),
        checkpoint=checkpoint_path,
        device=str(device),
        covariance_calibration=factor,
        neighbour_search=None if labels is None else labels.search,
    )


def calibrate(model: CovarianceModel, table: Table, device: torch.device, ranks: Ranks = SINGLE) -> float:
    """Set ``model.covariance_calibration`` to the NLL-optimal factor on ``table``; returns it.

    The pseudo-labels of the W2 bound measure the spread of the targets around their neighbourhood mean,
    not the mean network's error, so on nearly deterministic targets (UCI energy) the trained covariances
    are far too small for the residuals the model actually makes. One scalar fitted on held-out rows,
    :func:`training.metrics.variance_calibration`, corrects the overall level and keeps every shape and
    correlation; it is exported with the model.
    """
    model.covariance_calibration.fill_(1.0)
    mean, covariance = _predict_shared(model, table.inputs, device, ranks)
    factor = variance_calibration(mean, covariance, table.targets)
    model.covariance_calibration.fill_(factor)
    return factor


class _Step:
    """One optimisation step's forward pass: the model itself, or over several ranks the model wrapped in
    ``DistributedDataParallel``, whose backward pass averages the gradients of all ranks, with its batch
    normalisation over the whole batch (:func:`share_batch_statistics`): per-rank statistics of half a
    batch would train another model than one process does."""

    def __init__(self, model: CovarianceModel, ranks: Ranks) -> None:
        self.model = model
        self.ranks = ranks
        if ranks.distributed:
            share_batch_statistics(model)
        self._parallel = (
            # the running statistics are equal on every rank (whole-batch moments), so none is broadcast
            torch.nn.parallel.DistributedDataParallel(_Forward(model), broadcast_buffers=False)
            if ranks.distributed
            else None
        )

    def __call__(self, inputs: torch.Tensor) -> Prediction:
        if self._parallel is None:
            return self.model.predict(inputs)
        prediction: Prediction = self._parallel(inputs)
        return prediction


class _Forward(torch.nn.Module):
    """:meth:`CovarianceModel.predict` as a module's ``forward``, which is what DDP wraps."""

    def __init__(self, model: CovarianceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> Prediction:
        return self.model.predict(inputs)


def _train_epoch(
    step: _Step,
    optimiser: torch.optim.Optimizer,
    spec: LossSpec,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    labels: PseudoLabels | None,
    batches: torch.Generator,
    config: TrainConfig,
    epoch: int,
    progress: bool,
) -> float:
    """One pass over the shuffled training rows; returns the mean per-sample loss.

    Every rank draws the same seeded order and batches; each trains on its share of every batch, its loss
    summed and divided by the whole batch's size times the ranks, so DDP's gradient average is the
    gradient of the whole batch's mean loss, as in one process. The losses and a non-finite flag are
    summed over the ranks after every step, so a non-finite loss on any rank stops all of them together.
    """
    model, ranks = step.model, step.ranks
    model.train()
    order = torch.randperm(len(inputs), generator=batches).to(inputs.device)
    steps = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    if len(steps) > 1 and len(steps[-1]) < 2:
        steps[-2] = torch.cat(steps[-2:])
        steps.pop()
    total, count = 0.0, 0
    bar = tqdm(
        steps, desc=f"epoch {epoch + 1}/{config.epochs} {spec.name.value}", disable=not progress, leave=False
    )
    for number, batch in enumerate(bar):
        index = batch.tensor_split(ranks.world)[ranks.rank] if ranks.distributed else batch
        prediction = step(inputs[index])
        batch_labels = labels.select(index) if labels is not None else None
        losses = spec.function(prediction.mean, prediction.covariance, targets[index], batch_labels)
        loss = losses.sum() * (ranks.world / len(batch)) if ranks.distributed else losses.mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        summed = losses.detach().sum()
        if ranks.distributed:
            shared = ranks.sum(torch.stack([summed, (~torch.isfinite(summed)).to(summed.dtype)]).cpu())
            summed, failed = shared[0], bool(shared[1] > 0)
        else:
            failed = not bool(torch.isfinite(summed))
        if failed:
            raise TrainingDivergedError(
                f"non-finite loss ({summed.item()}) in epoch {epoch + 1}, batch {number + 1} with method "
                f"{spec.name.value} (try a lower --lr)"
            )
        gradient_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if not torch.isfinite(gradient_norm):
            raise TrainingDivergedError(
                f"non-finite gradient (loss {summed.item() / len(batch):.6g}) in epoch {epoch + 1}, batch "
                f"{number + 1} with method {spec.name.value}; the weights are those before this batch (try a "
                "lower --lr or another --method)"
            )
        optimiser.step()
        total += summed.item()
        count += len(batch)
        bar.set_postfix(loss=f"{total / count:.4g}")
    return total / count

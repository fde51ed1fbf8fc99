"""The pseudo-labels of one training run: the neighbourhoods found once, the labels refreshed on schedule.

``targets`` and ``local-linear`` labels are computed once, before the first epoch. ``residuals`` labels
need a mean network that has learnt something first: the first ``label_refresh`` epochs (the mean
warm-up) train on ``targets`` labels, and from then on the labels are the residuals of the current mean
network, recomputed at the start of every ``label_refresh``-th epoch over the same neighbourhoods. The
mean predictions behind the current labels are kept in the checkpoint, so a resumed run trains on exactly
the labels an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import Tensor

from covserve.training.config import TrainConfig
from covserve.training.data import Table
from covserve.training.distributed import SINGLE, Ranks
from covserve.training.errors import UsageError
from covserve.training.neighbour_search import SearchReport
from covserve.training.networks import CovarianceModel
from covserve.training.pseudolabels import (
    ALL_PARTS,
    LabelPart,
    LabelScheme,
    Neighbourhoods,
    PseudoLabels,
    find_neighbourhoods,
    labels_from_neighbourhoods,
)

__all__ = ["RunLabels", "refresh_due"]


def _gathered(share: Neighbourhoods, ranks: Ranks) -> Neighbourhoods:
    """Every row's neighbourhoods from each rank's ``share``; the search report of rank 0 with the slowest
    rank's seconds and the recall averaged over every rank's sample."""
    count = len(share.whitened)
    reports = ranks.gather(share.search)
    search = reports[0]
    if search is not None:
        recalls = [(r.recall, r.recall_rows) for r in reports if r is not None and r.recall is not None]
        rows = sum(sampled for _, sampled in recalls)
        search = dataclasses.replace(
            search,
            seconds=max(r.seconds for r in reports if r is not None),
            recall=sum(value * sampled for value, sampled in recalls) / rows if rows else None,
            recall_rows=rows,
        )
    return Neighbourhoods(
        ranks.gather_rows(share.index, count), ranks.gather_rows(share.weights, count), share.whitened, search
    )


PREDICTION_CHUNK = 4096
"""Rows per forward pass of the mean network when a refresh predicts every training row."""


def refresh_due(scheme: LabelScheme, refresh: int, epoch: int) -> bool:
    """Whether ``residuals`` labels are (re)computed at the start of ``epoch`` (0-based): at every
    multiple of ``refresh`` after the warm-up of ``refresh`` epochs; never for the other schemes."""
    return scheme is LabelScheme.RESIDUALS and epoch >= refresh and epoch % refresh == 0


class RunLabels:
    """The labels of one run on its standardised training rows, in float32 on the model's device.

    ``current`` holds the labels of the epoch about to run; ``predictions`` ``(N, D)`` the standardised
    mean predictions they were computed from (``None`` before the first ``residuals`` refresh).
    """

    def __init__(
        self,
        neighbourhoods: Neighbourhoods,
        targets: Tensor,
        scheme: LabelScheme,
        refresh: int,
        parts: frozenset[LabelPart] = ALL_PARTS,
    ) -> None:
        self._neighbourhoods = neighbourhoods
        self._targets = targets
        self.scheme = scheme
        self.refresh = refresh
        self.parts = parts
        initial = LabelScheme.TARGETS if scheme is LabelScheme.RESIDUALS else scheme
        self.predictions: Tensor | None = None
        self.current = self._compute(initial, None)

    @classmethod
    def build(
        cls,
        model: CovarianceModel,
        table: Table,
        config: TrainConfig,
        parts: frozenset[LabelPart] = ALL_PARTS,
        ranks: Ranks = SINGLE,
    ) -> RunLabels:
        """Search the neighbourhoods of ``table``'s standardised inputs and compute the first labels,
        keeping ``parts`` (what the run's losses read).

        Over several ``ranks`` each searches the neighbours of its share of the query rows and the shares
        are gathered, so every rank holds the same neighbourhoods (and labels) of every row; the recall of
        an approximate index is the mean over the ranks' samples. Raises :class:`UsageError` naming
        ``--neighbours`` when ``local-linear`` has too few neighbours.
        """
        device = model.input_mean.device
        inputs = model.standardise_inputs(torch.as_tensor(table.inputs, dtype=torch.float32, device=device))
        targets = model.standardise_targets(
            torch.as_tensor(table.targets, dtype=torch.float32, device=device)
        )
        neighbours = min(config.label_neighbours, len(table) - 1)
        if config.labels is LabelScheme.LOCAL_LINEAR and neighbours < inputs.shape[1] + 2:
            raise UsageError(
                f"--neighbours {neighbours}: --labels local-linear fits {inputs.shape[1] + 1} coefficients "
                f"per neighbourhood and needs at least {inputs.shape[1] + 2} neighbours"
            )
        neighbourhoods = find_neighbourhoods(
            inputs,
            neighbours=neighbours,
            temperature=config.temperature,
            index=config.neighbour_index,
            threads=config.threads,
            seed=config.seed,
            rows=ranks.share(len(table)) if ranks.distributed else None,
        )
        if ranks.distributed:
            neighbourhoods = _gathered(neighbourhoods, ranks)
        return cls(neighbourhoods, targets, config.labels, config.label_refresh, parts)

    @property
    def search(self) -> SearchReport | None:
        """How the neighbourhoods were found."""
        return self._neighbourhoods.search

    @property
    def refreshes(self) -> bool:
        """Whether these labels change during training (``residuals``)."""
        return self.scheme is LabelScheme.RESIDUALS

    def _compute(self, scheme: LabelScheme, predictions: Tensor | None) -> PseudoLabels:
        labels = labels_from_neighbourhoods(
            self._neighbourhoods, self._targets, scheme, predictions=predictions, parts=self.parts
        )
        return labels.to(torch.float32, self._targets.device)

    def restore(self, predictions: Tensor | None) -> None:
        """The labels of a checkpoint whose last refresh predicted ``predictions`` (``None``: none yet)."""
        if predictions is not None:
            self.predictions = predictions.to(self._targets.device)
            self.current = self._compute(LabelScheme.RESIDUALS, self.predictions)

    def update(self, model: CovarianceModel, inputs: Tensor, epoch: int) -> float:
        """Recompute the ``residuals`` labels from ``model``'s mean on the standardised training
        ``inputs`` ``(N, M)`` when a refresh is due at ``epoch``; returns the seconds spent (0 if none)."""
        if not refresh_due(self.scheme, self.refresh, epoch):
            return 0.0
        started = time.perf_counter()
        was_training = model.mean_network.training
        model.mean_network.eval()
        with torch.no_grad():
            self.predictions = torch.cat(
                [
                    model.mean_network(inputs[start : start + PREDICTION_CHUNK])
                    for start in range(0, len(inputs), PREDICTION_CHUNK)
                ]
            )
        model.mean_network.train(was_training)
        self.current = self._compute(LabelScheme.RESIDUALS, self.predictions)
        return time.perf_counter() - started

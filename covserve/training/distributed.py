"""Data-parallel training over the processes that ``torchrun`` starts (``torch.distributed``).

``torchrun --nproc-per-node 2 -m covserve.training fit ...`` starts one process per rank with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in its environment; :func:`start` joins them
into one process group (gloo for CPU tensors, NCCL for CUDA tensors when CUDA is available). Without
those variables, or with ``WORLD_SIZE=1``, training runs in this process alone (:data:`SINGLE`).

Everything here is a thin wrapper over ``torch.distributed`` collectives that every rank must call in the
same order; on a single process each is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["SINGLE", "Ranks", "finish", "share_batch_statistics", "start"]

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world`` processes and its ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the only rank that reads run files and writes anything."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.world > 1

    def share(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` rows (the shares of all ranks partition them)."""
        return slice(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (pickled; for small control objects)."""
        if not self.distributed:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        result: T = box[0]
        return result

    def gather(self, values: T) -> list[T]:
        """Every rank's ``values`` (pickled), in rank order."""
        if not self.distributed:
            return [values]
        boxes: list[Any] = [None] * self.world
        dist.all_gather_object(boxes, values)
        return boxes

    def gather_rows(self, share: Tensor, count: int) -> Tensor:
        """The ``(count, ...)`` concatenation of every rank's :meth:`share` of rows ``(n_rank, ...)``."""
        if not self.distributed:
            return share
        widest = -(-count // self.world)
        padded = share.new_zeros((widest, *share.shape[1:]))
        padded[: len(share)] = share
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        rows = [Ranks(rank, self.world).share(count) for rank in range(self.world)]
        return torch.cat(
            [block[: piece.stop - piece.start] for block, piece in zip(gathered, rows, strict=True)]
        )

    def sum(self, values: Tensor) -> Tensor:
        """The elementwise sum of ``values`` over all ranks (in place, and returned)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values


SINGLE = Ranks()
"""One process, no process group."""


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher speaking its environment) started more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> Ranks:
    """Join the process group ``torchrun`` described in the environment, or :data:`SINGLE` without one.

    The group carries CPU tensors and objects over gloo and, where CUDA is available, CUDA tensors over
    NCCL; each rank then uses the GPU of its ``LOCAL_RANK``.
    """
    if not launched():
        return SINGLE
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    return ranks


def finish() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """``Σ_ranks x`` with its gradient: every rank's output depends on every rank's input, so the
    incoming gradients are summed over the ranks too."""

    @staticmethod
    def forward(ctx: Any, values: Tensor) -> Tensor:
        summed = values.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> Tensor:
        summed = gradient.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed


class _WholeBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the whole batch over every rank, as if one
    process saw it (what ``nn.SyncBatchNorm`` does on CUDA only). One differentiable all-reduce of the
    rows' count, sum and sum of squares per forward pass; evaluation uses the running statistics."""

    def forward(self, inputs: Tensor) -> Tensor:
        if not self.training:
            return super().forward(inputs)
        width = inputs.shape[1]
        count = inputs.new_full((1,), float(inputs.shape[0]))
        local = torch.cat([count, inputs.sum(dim=0), inputs.square().sum(dim=0)])
        moments = cast(Tensor, _SumOverRanks.apply(local))  # type: ignore[no-untyped-call]
        rows = moments[0]
        mean = moments[1 : 1 + width] / rows
        variance = (moments[1 + width :] / rows - mean.square()).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                assert self.running_mean is not None
                assert self.running_var is not None
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(variance * rows / (rows - 1), factor)
        normalised = (inputs - mean) * torch.rsqrt(variance + self.eps)
        if self.affine:
            normalised = normalised * self.weight + self.bias
        return normalised


def share_batch_statistics(module: nn.Module) -> None:
    """Make every ``BatchNorm1d`` in ``module`` normalise by the statistics of the whole batch across the
    ranks (in place; parameters, buffers and the state dict stay those of ``BatchNorm1d``)."""
    for child in module.modules():
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, _WholeBatchNorm):
            child.__class__ = _WholeBatchNorm

"""The processes of a training run and the few collectives it needs.

One process is the default. ``accelerate launch --num_processes N ...`` (or torchrun) starts N: accelerate's
``PartialState`` joins them into one process group (gloo on CPUs) from the environment the launcher sets.
Each process trains on its own slice of every step's batch; the trainer averages the trainable gradients
over the processes before the optimiser step (the frozen LLM has none, so nothing of it is synchronised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def join_processes() -> Processes:
    """This process's place in the run, joining the process group a launcher asked for."""
    from accelerate import PartialState  # imported here: it is slow to import and one process needs none

    PartialState()  # initialises the process group from the launcher's environment, if there is one
    # Read from the group itself: accelerate's own counters stay at one process on CPUs unless its
    # launcher set them, though the group it formed holds all of them.
    return current()


def current() -> Processes:
    """This process's place, from the process group already joined (one process when there is none)."""
    return Processes(dist.get_rank(), dist.get_world_size()) if _grouped() else Processes()


def barrier() -> None:
    if _grouped():
        dist.barrier()


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes (a missing gradient counts as zero)."""
    if not _grouped():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for parameter, grad in zip(parameters, grads, strict=True):
        size = grad.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
        offset += size


def mean_over_processes(value: float) -> float:
    if not _grouped():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / dist.get_world_size()


def share_of_mean(local_count: int) -> float:
    """The factor turning a mean over this process's ``local_count`` items into its share of the mean over
    every process's items (1.0 in one process). Gradients are averaged over processes, so a loss scaled by it
    takes the step one process takes with the whole batch even when processes hold unequal counts."""
    if not _grouped():
        return 1.0
    total = torch.tensor([float(local_count)], dtype=torch.float64)
    dist.all_reduce(total)
    return local_count * dist.get_world_size() / max(float(total), 1.0)


def gather_objects(value: Any) -> list[Any]:
    """``value`` from every process, in rank order."""
    if not _grouped():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class _GatherRows(torch.autograd.Function):
    """Concatenates every process's rows (counts may differ). Backward: each process's rows get the sum of
    the gradients all processes computed for them, so a loss every process computes over all rows trains
    each process's own rows with that loss's full gradient, times the number of processes (which the
    trainer's gradient averaging divides out)."""

    @staticmethod
    def forward(ctx, rows: Tensor, counts: list[int]) -> Tensor:  # type: ignore[override]
        rank = dist.get_rank()
        ctx.span = (sum(counts[:rank]), sum(counts[: rank + 1]))
        widest = max(counts)
        padded = rows.new_zeros((widest, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        pieces = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(pieces, padded.contiguous())
        return torch.cat([piece[:count] for piece, count in zip(pieces, counts, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start, end = ctx.span
        return total[start:end], None


def gather_rows(rows: Tensor) -> tuple[Tensor, list[int]]:
    """All processes' rows of ``rows`` (first dimension), this process's keeping their gradient; and how
    many rows each process gave."""
    if not _grouped():
        return rows, [rows.shape[0]]
    counts = [int(c) for c in gather_objects(rows.shape[0])]
    return _GatherRows.apply(rows, counts), counts

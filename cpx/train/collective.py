"""The few collective operations training needs, each a no-op without a process group, so
single-process and data-parallel training run the same code."""

from __future__ import annotations

from typing import Any

import torch


def _group_up() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if _group_up():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place and return it (``t`` itself without a group)."""
    if _group_up():
        torch.distributed.all_reduce(t)
    return t


def rank0_float(value: float) -> float:
    """``value`` as rank 0 has it, on every rank."""
    if not _group_up():
        return value
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, 0)
    return float(t)


def rank0_object(value: Any) -> Any:
    """A picklable ``value`` as rank 0 has it, on every rank."""
    if not _group_up():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, 0)
    return box[0]


def barrier() -> None:
    """Wait for every rank."""
    if _group_up():
        torch.distributed.barrier()

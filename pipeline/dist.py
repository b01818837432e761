"""Rank, world and the few collectives the cache stage and the trainers share.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the first call initialises the process group (NCCL on GPUs,
gloo on CPU); without it every function is the single-process answer, so the same code runs both ways.
"""

from __future__ import annotations

import os

import torch

__all__ = ["any_rank", "barrier", "is_main", "rank_world", "sum_over_ranks"]


def rank_world() -> tuple[int, int]:
    """(rank, world_size); initialises a gloo/nccl process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Rank 0 (or no torchrun): the one process that reports and merges."""
    return rank_world()[0] == 0


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> str:
    import torch.distributed as dist

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if dist.get_backend() == "nccl" else "cpu"


def sum_over_ranks(n: int) -> int:
    """``n`` summed over every rank (``n`` itself in one process)."""
    rank_world()
    if not _active():
        return n
    import torch.distributed as dist

    t = torch.tensor([n], device=_device())
    dist.all_reduce(t)
    return int(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a stop request every rank must honour)."""
    if not _active():
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if _active():
        import torch.distributed as dist

        dist.barrier()

"""Keeping decisions identical across data-parallel ranks.

Every rank runs its own scheduler. They stay in lock step because each ``step`` first replaces
the local monitored value by the mean over all ranks: an all-reduce delivers the same float64 to
every rank, so every scheduler sees the same sequence of values and takes the same decisions. A
NaN on any rank makes the mean NaN everywhere (no improvement on all ranks alike).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    """Number of processes in the default group (1 when not running distributed)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def _reduction_device() -> torch.device:
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over all ranks (``value`` itself outside a process group).

    Every rank must call this at the same point (it is a collective operation).

    Args:
        value: This rank's monitored value.
    """
    size = world_size()
    if size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_reduction_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total.item()) / size


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` or ``torch.compile``'s wrapper.

    Parameter names are taken from the unwrapped module, so states saved with and without DDP
    or compilation are interchangeable.
    """
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model

"""Keeping decisions and weights identical across data-parallel ranks.

Every rank runs its own scheduler. They stay in lock step because each ``step`` first replaces
the local monitored value by the mean over all ranks: an all-reduce delivers the same float64 to
every rank, so every scheduler sees the same sequence of values and takes the same decisions. A
NaN on any rank makes the mean NaN everywhere (no improvement on all ranks alike).

``DistributedDataParallel`` averages only the gradients of the parameters that required grad
when the wrapper was built. After an unfreeze under an old wrapper the newly trainable
parameters train on each rank's data alone and the ranks drift apart. Under data parallelism the
weights are bit-identical on every rank, so ``step`` compares an exact fingerprint of the
trainable weights across ranks and stops the run on the first difference; ``rewrap_ddp``
builds the new wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

_INTEGER_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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


def _sharded_types() -> tuple[type, ...]:
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # torch built without distributed support
        return ()
    return (FullyShardedDataParallel, FSDPModule)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``, ``DataParallel`` or ``torch.compile``.

    Parameter names are taken from the unwrapped module, so states saved with and without DDP
    or compilation are interchangeable.

    Raises:
        TypeError: ``model`` is sharded by FSDP (its parameters are flattened shards, which
            cannot be frozen and unfrozen group by group).
    """
    sharded = _sharded_types()
    if sharded and any(isinstance(m, sharded) for m in model.modules()):
        raise TypeError(
            "dynft does not support FSDP (FullyShardedDataParallel / fully_shard): its "
            "parameters are flattened shards that cannot be unfrozen group by group; use "
            "DistributedDataParallel and dynft_torch.rewrap_ddp"
        )
    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def weights_fingerprint(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """An exact, order-independent checksum of the parameters' bits (a 0-d int64 tensor, CPU).

    Integer sums of the raw bits are associative, so every rank gets the same number for
    bit-identical weights whatever its thread count; any changed bit changes it.
    """
    sums = [
        p.detach().view(_INTEGER_OF_SIZE[p.element_size()]).sum(dtype=torch.int64).cpu()
        for p in parameters
    ]
    return torch.stack(sums).sum() if sums else torch.zeros((), dtype=torch.int64)


def check_ranks_agree(
    parameters: Iterable[torch.Tensor], epoch: int, unfrozen_at: int | None
) -> None:
    """Raise on every rank if the trainable weights differ between ranks (a collective call).

    Args:
        parameters: The trainable parameters.
        epoch: The epoch just trained, for the message.
        unfrozen_at: The epoch of the last unfreeze, if any, for the message.

    Raises:
        RuntimeError: The ranks hold different weights.
    """
    if world_size() == 1:
        return
    fingerprint = weights_fingerprint(parameters)
    extremes = torch.stack([fingerprint, -fingerprint]).to(_reduction_device())
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    if int(extremes[0]) == -int(extremes[1]):
        return
    cause = (
        f"the groups unfrozen at epoch {unfrozen_at} trained under a DistributedDataParallel "
        "wrapper built before that unfreeze, which averages only the gradients of the "
        "parameters that were trainable when it was built. Re-wrap after every unfreeze: "
        "`if decision.newly_unfrozen: ddp_model = dynft_torch.rewrap_ddp(ddp_model)`"
        if unfrozen_at is not None
        else "every rank must train the same model under DistributedDataParallel"
    )
    raise RuntimeError(f"the ranks hold different trainable weights after epoch {epoch}: {cause}")


def rewrap_ddp(model: DistributedDataParallel) -> DistributedDataParallel:
    """A new ``DistributedDataParallel`` around ``model.module``, with the same settings.

    Call it on every rank after each unfreeze (``decision.newly_unfrozen``) and train with the
    result; its reducer averages the gradients of every parameter trainable now. It costs one
    broadcast of the (identical) weights.

    Raises:
        TypeError: ``model`` is not a ``DistributedDataParallel``.
        ValueError: It was built with ``static_graph=True``, which assumes the set of trained
            parameters never changes.
    """
    if not isinstance(model, DistributedDataParallel):
        raise TypeError(f"rewrap_ddp needs a DistributedDataParallel, got {type(model).__name__}")
    if model.static_graph:
        raise ValueError(
            "a DistributedDataParallel with static_graph=True cannot follow unfreezing (the set "
            "of parameters that receive gradients changes); build it with static_graph=False"
        )
    options = {
        "device_ids": model.device_ids,
        "output_device": model.output_device,
        "dim": model.dim,
        "process_group": model.process_group,
        "bucket_cap_mb": model.bucket_bytes_cap / 2**20,
        "find_unused_parameters": model.find_unused_parameters,
        "gradient_as_bucket_view": model.gradient_as_bucket_view,
    }
    accepted = inspect.signature(DistributedDataParallel).parameters
    if "forward_sync_buffers" in accepted:
        options["forward_sync_buffers"] = model.forward_sync_buffers
    else:
        options["broadcast_buffers"] = model.broadcast_buffers
    return DistributedDataParallel(model.module, **options)

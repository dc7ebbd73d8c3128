"""Worker processes for the DDP tests (2 CPU ranks on gloo, started by torch.multiprocessing)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dynft_torch import DynamicFineTuner, rewrap_ddp
from tiny_models import TinyNet, make_data, state_copy, train_epoch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

WORLD_SIZE = 2
# The mean over ranks of the scripted monitor, and each rank's deviation from it: alone, rank 1
# would see an improvement at epoch 2 and rank 0 none at epoch 3, so only a synchronised value
# gives both ranks the decisions of the mean trace.
MEAN_TRACE = (1.0, 1.1, 0.9, 1.0, 0.8)
RANK_DEVIATION = (0.0, 0.4, 0.3, 0.0, 0.2)
TUNER_OPTIONS = {"patience": 1, "step": 2, "decay": 0.5, "max_epochs": 10}


def rank_value(epoch: int, rank: int) -> float:
    """The monitored value rank ``rank`` reports after epoch ``epoch`` (0-based)."""
    sign = 1.0 if rank == 0 else -1.0
    return MEAN_TRACE[epoch] + sign * RANK_DEVIATION[epoch] / 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(worker, *args) -> None:
    """Run ``worker(rank, port, *args)`` on ``WORLD_SIZE`` fresh processes and wait."""
    mp.spawn(worker, args=(free_port(), *args), nprocs=WORLD_SIZE, join=True)


def _environment(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD_SIZE),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )


def plain_ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """Train TinyNet under DDP twice: re-wrapping after each unfreeze, and never re-wrapping.

    The tuner is handed a DDP wrapper built before it (it unwraps it); the freeze makes that
    wrapper stale, so it is re-wrapped at once. Without re-wrapping after an unfreeze, the first
    step after it raises on every rank; the error message is saved.
    """
    _environment(rank, port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    for rewrap in (True, False):
        torch.manual_seed(0)
        model = TinyNet()
        initial = state_copy(model)
        ddp_model: nn.Module = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.2, momentum=0.9)
        tuner = DynamicFineTuner(ddp_model, optimizer, "backbone", **TUNER_OPTIONS)
        ddp_model = rewrap_ddp(ddp_model)
        data = make_data(seed=10 + rank)  # each rank trains on its own shard
        decisions, error = [], None
        for epoch in range(len(MEAN_TRACE)):
            train_epoch(ddp_model, optimizer, data)
            try:
                decision = tuner.step(rank_value(epoch, rank))
            except RuntimeError as err:
                error = str(err)
                break
            decisions.append(decision.to_dict())
            if decision.newly_unfrozen and rewrap:
                ddp_model = rewrap_ddp(ddp_model)
        result = {
            "decisions": decisions,
            "state": state_copy(model),
            "initial": initial,
            "error": error,
        }
        torch.save(result, Path(out_dir) / f"rewrap{rewrap}-rank{rank}.pt")
    dist.destroy_process_group()

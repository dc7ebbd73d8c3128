"""DDP on 2 CPU processes (gloo): identical decisions and weights on every rank."""

from __future__ import annotations

import pytest
import torch
from ddp_workers import (
    MEAN_TRACE,
    TUNER_OPTIONS,
    WORLD_SIZE,
    plain_ddp_worker,
    spawn,
)

from dynft_core import UnfreezeScheduler

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def expected_decisions(epochs: int) -> list[dict]:
    scheduler = UnfreezeScheduler(4, **TUNER_OPTIONS)
    return [scheduler.step(value).to_dict() for value in MEAN_TRACE[:epochs]]


def load(tmp_path, tag):
    return [
        torch.load(tmp_path / f"{tag}-rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)
    ]


def assert_same_weights(results) -> None:
    for name, tensor in results[0]["state"].items():
        assert torch.equal(tensor, results[1]["state"][name]), f"ranks differ in {name}"


def assert_newly_unfrozen_trained(result, prefix: str) -> None:
    for block in range(4):
        name = f"{prefix}backbone.{block}.0.weight"
        assert not torch.equal(result["state"][name], result["initial"][name]), name
        bn = f"{prefix}backbone.{block}.1.running_mean"
        assert torch.equal(result["state"][bn], result["initial"][bn]), bn


def test_plain_ddp_rewrap_keeps_ranks_identical(tmp_path):
    spawn(plain_ddp_worker, str(tmp_path))
    results = load(tmp_path, "rewrapTrue")
    expected = expected_decisions(len(MEAN_TRACE))
    assert [d["newly_unfrozen"] for d in expected] == [[], [2, 3], [], [0, 1], []]
    for result in results:
        assert result["decisions"] == expected
    assert_same_weights(results)
    assert_newly_unfrozen_trained(results[0], "")

    assert all(result["error"] is None for result in results)

    # without re-wrapping, the reducer never averages the newly unfrozen gradients: the ranks
    # drift apart during epoch 3, and the step after it stops the run on both ranks
    stale = load(tmp_path, "rewrapFalse")
    assert stale[0]["decisions"] == stale[1]["decisions"] == expected[:2]
    for result in stale:
        assert "ranks hold different trainable weights after epoch 3" in result["error"]
        assert "unfrozen at epoch 2" in result["error"] and "rewrap_ddp" in result["error"]
    diverged = [
        name
        for name, tensor in stale[0]["state"].items()
        if not torch.equal(tensor, stale[1]["state"][name])
    ]
    assert "backbone.3.0.weight" in diverged and "head.weight" not in diverged


def test_fsdp_is_refused_and_rewrap_ddp_keeps_the_settings():
    import torch.distributed as dist
    from ddp_workers import free_port
    from dynft_torch import DynamicFineTuner, rewrap_ddp
    from tiny_models import TinyNet
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.nn.parallel import DistributedDataParallel

    with pytest.raises(TypeError, match="rewrap_ddp needs a DistributedDataParallel, got Linear"):
        rewrap_ddp(torch.nn.Linear(2, 2))
    dist.init_process_group(
        "gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}"
    )
    try:
        sharded = fully_shard(TinyNet())
        wrapped = FullyShardedDataParallel(TinyNet(), device_id=torch.device("cpu"))
        for model in (sharded, wrapped):
            with pytest.raises(TypeError, match="dynft does not support FSDP"):
                DynamicFineTuner(model, torch.optim.SGD(model.parameters(), lr=0.1), "backbone")
        model = TinyNet()
        old = DistributedDataParallel(model, find_unused_parameters=True, bucket_cap_mb=5)
        new = rewrap_ddp(old)
        assert new is not old and new.module is model
        assert new.find_unused_parameters and new.bucket_bytes_cap == old.bucket_bytes_cap
        with pytest.raises(ValueError, match="static_graph=True cannot follow unfreezing"):
            rewrap_ddp(DistributedDataParallel(TinyNet(), static_graph=True))
    finally:
        dist.destroy_process_group()

"""The Lightning callback under strategies: DDP on 2 CPU processes (gloo, forked from this
process by ``strategy="ddp_fork"``), re-wrapped after every unfreeze; the strategies it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")
import dynft_torch.lightning as dynft_lightning  # noqa: E402
from ddp_workers import MEAN_TRACE, WORLD_SIZE, rank_value  # noqa: E402
from dynft_torch.lightning import DynamicFineTuning  # noqa: E402
from dynft_torch.lightning_checks import check_strategy  # noqa: E402
from lightning.pytorch.strategies import (  # noqa: E402
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    XLAStrategy,
)
from lightning_models import ScriptedModule, loaders, trainer  # noqa: E402
from tiny_models import state_copy  # noqa: E402

from dynft_core import UnfreezeScheduler  # noqa: E402

OPTIONS = {"monitor": "score", "mode": "min", "patience": 1, "step": 2, "decay": 0.5}


class RankScore(ScriptedModule):
    """Each rank logs its own value; their mean is MEAN_TRACE (only a synchronised value gives
    both ranks its decisions)."""

    def validation_step(self, batch, batch_index):
        index = self.trainer.global_step // self.steps_per_validation - 1
        self.log("score", rank_value(index, self.global_rank))


class Record(pl.Callback):
    """Per rank: the DDP wrapper after every decision, and the result at the end."""

    def __init__(self, folder: Path, dynft: DynamicFineTuning) -> None:
        self.folder, self.dynft = folder, dynft
        self.wrappers: list[Any] = []  # the wrappers themselves: a freed one's id is reused

    def on_fit_start(self, trainer, pl_module):
        self.initial = state_copy(pl_module)

    def on_validation_end(self, trainer, pl_module):
        self.wrappers.append(trainer.strategy.model)

    def on_fit_end(self, trainer, pl_module):
        result = {
            "decisions": [d.to_dict() for d in self.dynft.decisions],
            "wrappers": len({id(wrapper) for wrapper in self.wrappers}),
            "state": state_copy(pl_module),
            "best": dict(self.dynft.tuner.snapshot.tensors),
            "initial": self.initial,
        }
        torch.save(result, self.folder / f"rank{trainer.global_rank}.pt")


def ddp_fit(folder: Path) -> tuple[RankScore, DynamicFineTuning]:
    callback = DynamicFineTuning("net.backbone", **OPTIONS)
    record = Record(folder, callback)
    run = trainer([callback, record], folder, max_epochs=len(MEAN_TRACE), strategy="ddp_fork",
                  devices=WORLD_SIZE)  # fmt: skip
    module = RankScore()
    run.fit(module, *loaders(batches=4, batch_size=4))  # each rank: 2 of the 4 batches
    return module, callback


def test_ddp_rewraps_after_every_unfreeze_and_keeps_the_ranks_identical(tmp_path):
    module, callback = ddp_fit(tmp_path)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    scheduler = UnfreezeScheduler(4, patience=1, step=2, decay=0.5, max_epochs=len(MEAN_TRACE))
    expected = [scheduler.step(value).to_dict() for value in MEAN_TRACE]
    assert [d["newly_unfrozen"] for d in expected] == [[], [2, 3], [], [0, 1], []]
    expected_values = [d.pop("value") for d in expected]
    for result in results:  # Lightning logs float32: the values agree approximately
        values = [d.pop("value") for d in result["decisions"]]
        assert values == pytest.approx(expected_values, rel=1e-6)
        assert result["decisions"] == expected
        assert result["wrappers"] == 3  # the setup's, and one per unfreeze
        for name, tensor in result["best"].items():  # the run ended on the best state
            assert torch.equal(result["state"][name], tensor), name
    for name, tensor in results[0]["state"].items():
        assert torch.equal(tensor, results[1]["state"][name]), f"ranks differ in {name}"
    # this process ran no hook: Lightning hands it rank 0's final weights
    assert callback.tuner is None
    for name, tensor in results[0]["state"].items():
        assert torch.equal(module.state_dict()[name], tensor), name
    state, initial = results[0]["state"], results[0]["initial"]
    for block in range(4):
        conv, norm = f"net.backbone.{block}.0.weight", f"net.backbone.{block}.1.running_mean"
        assert not torch.equal(state[conv], initial[conv]), conv
        assert torch.equal(state[norm], initial[norm]), norm


def test_without_the_rewrap_the_ranks_drift_and_the_run_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(dynft_lightning, "_rewrap_ddp", lambda trainer: None)  # forked too
    with pytest.raises(Exception, match="ranks hold different trainable weights after epoch 3"):
        ddp_fit(tmp_path)


@pytest.mark.parametrize(
    "strategy", [DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, XLAStrategy]
)
def test_sharding_and_untested_strategies_are_refused(strategy):
    # built without __init__: DeepSpeed and XLA need packages that are not installed, and the
    # Trainer refuses FSDP on CPU before any callback runs; the check only reads the class
    with pytest.raises(
        TypeError, match=f"DynamicFineTuning (does not support|supports) .*{strategy.__name__[:4]}"
    ):
        check_strategy(object.__new__(strategy))


def test_ddp_with_a_static_graph_is_refused_at_setup(tmp_path):
    module = ScriptedModule()
    run = trainer([DynamicFineTuning("net.backbone", **OPTIONS)], tmp_path,
                  strategy=DDPStrategy(static_graph=True))  # fmt: skip
    try:
        with pytest.raises(ValueError, match=r"static_graph=True\) cannot follow unfreezing"):
            run.fit(module, *loaders())
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert all(p.requires_grad for p in module.parameters())

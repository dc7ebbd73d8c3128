"""The six fine-tuning strategies, framework-free: what trains when, and when a run stops.

Every strategy trains with the same optimizer, learning rate, batches and epoch budget ``n``;
they differ only in which backbone layers are trainable and how the validation loss steers them:

* ``linear_probe``: the head only, the whole backbone frozen;
* ``full``: the whole backbone (BatchNorm excepted) and the head from the first epoch;
* ``traditional``: the paper's baseline, the top ``n`` layers of Table 3 and the head;
* ``two_stage``: the Keras transfer-learning guide / fastai recipe: the head until the validation
  loss plateaus, then the whole backbone unfrozen at a tenth of the rate with the best weights
  restored, until it plateaus again;
* ``dynamic``: Algorithm 1, ``k`` more layers unfrozen at each plateau, at the head's rate;
* ``dynamic_tuned``: the same, with the unfrozen layers at ``unfrozen_lr_ratio`` times the
  head's rate (the ratio chosen by ``--sweep unfrozen_lr_ratio=...`` or given by
  ``--unfrozen-lr-ratio``), to tell the method from its rate.

The three fixed-depth strategies stop after ``patience`` epochs without a lower validation loss
and end on the best weights; :class:`FixedDepthStop` takes that decision with
``dynft_core.PlateauMonitor``, the best-value tracking inside ``UnfreezeScheduler``. The two
staged strategies are all run by the dynft adapters, whose scheduler takes every decision:
``two_stage`` is Algorithm 1 with a single group (the whole backbone), ``step = 1`` and a decay
of 0.9, i.e. one unfreeze at ``lr / 10`` (times ``unfrozen_lr_ratio`` for the backbone) and a
stop at the next plateau.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from benchmarks.study.config import StudyConfig
from dynft_core import PlateauMonitor

FIXED_DEPTH = ("linear_probe", "full", "traditional")
STAGED = ("two_stage", "dynamic", "dynamic_tuned")
# The staged strategies whose unfrozen groups take StudyConfig.unfrozen_lr_ratio (dynamic is
# Algorithm 1 as the paper defines it: one rate for everything).
RATIO_STRATEGIES = ("two_stage", "dynamic_tuned")
# two_stage unfreezes the whole backbone at a tenth of the rate (the Keras guide, fastai)
TWO_STAGE_DECAY = 0.9

Group = TypeVar("Group")


def fixed_depth(strategy: str, top_n: int, num_layers: int) -> int:
    """Backbone layers (counted from the top) a fixed-depth strategy trains from epoch 1.

    Args:
        strategy: One of :data:`FIXED_DEPTH`.
        top_n: The traditional depth (Table 3 or ``--top-n``).
        num_layers: Layers the backbone has.
    """
    depths = {"linear_probe": 0, "traditional": top_n, "full": num_layers}
    if strategy not in depths:
        raise ValueError(f"{strategy!r} is not a fixed-depth strategy; those are {FIXED_DEPTH}")
    return depths[strategy]


@dataclass(frozen=True)
class StagedPlan:
    """What the dynft adapter is given for a staged strategy.

    Args:
        merge_groups: Unfreeze the whole backbone as one group (``two_stage``) instead of
            layer by layer (``dynamic``).
        options: ``patience``, ``step``, ``decay``, ``max_epochs`` and ``unfrozen_lr_ratio``
            for the adapter.
    """

    merge_groups: bool
    options: dict[str, Any]

    def groups(self, layers: list[list[Group]]) -> list[list[Group]]:
        """The adapter's groups, from the backbone's layer groups (input to output)."""
        if self.merge_groups:
            return [[member for group in layers for member in group]]
        return layers


def unfrozen_lr_ratio(strategy: str, cfg: StudyConfig) -> float | None:
    """The unfrozen-group rate ratio ``strategy`` runs with (``None``: it unfreezes nothing)."""
    if strategy in RATIO_STRATEGIES:
        return cfg.unfrozen_lr_ratio
    return 1.0 if strategy in STAGED else None


def staged_plan(strategy: str, cfg: StudyConfig) -> StagedPlan:
    """The adapter settings of a strategy of :data:`STAGED` under ``cfg``."""
    ratio = unfrozen_lr_ratio(strategy, cfg)
    if strategy == "two_stage":
        options = {"patience": cfg.patience, "step": 1, "decay": TWO_STAGE_DECAY}
        merge = True
    elif strategy in STAGED:
        options = {"patience": cfg.patience, "step": cfg.step, "decay": cfg.decay}
        merge = False
    else:
        raise ValueError(f"{strategy!r} is not a staged strategy; those are {STAGED}")
    return StagedPlan(merge, {**options, "max_epochs": cfg.epochs, "unfrozen_lr_ratio": ratio})


class FixedDepthStop:
    """Early stopping of the fixed-depth strategies on the validation loss.

    Stops after ``patience`` epochs without improvement (or at ``max_epochs``), like the
    scheduler's final plateau, and the run then ends on the best weights.

    Args:
        patience: Epochs without a lower validation loss before stopping.
        max_epochs: Epoch budget.
    """

    def __init__(self, patience: int, max_epochs: int) -> None:
        self.patience = patience
        self.max_epochs = max_epochs
        self.monitor = PlateauMonitor(mode="min")
        self.epoch = 0

    @property
    def best_epoch(self) -> int | None:
        """Epoch (1-based) of the lowest validation loss so far."""
        return self.monitor.best_epoch

    def step(self, val_loss: float) -> tuple[bool, bool]:
        """Record one epoch's validation loss; returns ``(improved, stop)``."""
        self.epoch += 1
        improved = self.monitor.update(val_loss, self.epoch)
        stop = self.monitor.wait >= self.patience or self.epoch >= self.max_epochs
        return improved, stop

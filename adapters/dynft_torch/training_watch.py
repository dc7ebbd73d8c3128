"""Noticing the two silent ways a plain loop can bypass the tuner.

1. The optimizer was re-created (or another one trains the model): decays and new param groups
   would go to an optimizer nobody steps. Between two ``tuner.step`` calls the watch counts the
   tuner's optimizer steps (a step post-hook) and reads the trainable parameters' version
   counters (every in-place update bumps them). Parameters that changed while the tuner's
   optimizer took no step were trained by something else.
2. The loop ended without ``finish()``: the model then holds the last epoch's weights, not the
   best. A finalizer warns when the tuner is garbage-collected (or the interpreter exits) in
   that state.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from dynft_core import Decision, UnfreezeScheduler


def _runs_step_hooks(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer whose ``step`` runs step hooks.

    A wrapper such as accelerate's ``AcceleratedOptimizer`` (what Hugging Face ``Trainer``
    trains with) subclasses ``Optimizer`` without its initialisation, so it has no hooks of its
    own; its ``step`` calls the optimizer it holds, whose hooks run.
    """
    inner = getattr(optimizer, "optimizer", None)
    while not hasattr(optimizer, "_optimizer_step_post_hooks") and isinstance(
        inner, torch.optim.Optimizer
    ):
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


class TrainingWatch:
    """Optimizer steps and parameter versions since the last decision.

    Holds no reference to the tuner, so the tuner can be garbage-collected while the optimizer
    (which holds the hook) lives on.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.on_best = False
        self._versions: list[tuple[torch.Tensor, int]] = []
        self._handle: RemovableHandle | None = None

    def _count(self, optimizer: object, args: object, kwargs: object) -> None:
        self.steps += 1

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Count the steps of ``optimizer`` (and stop counting the previous one's)."""
        self.detach()
        self._handle = _runs_step_hooks(optimizer).register_step_post_hook(self._count)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def mark(self, trainable: Sequence[torch.Tensor], decision: Decision | None = None) -> None:
        """Start a new interval: no step yet, the parameters as they are now."""
        self.steps = 0
        self._versions = [(p, p._version) for p in trainable]
        if decision is not None:
            self.on_best = decision.improved or decision.restore_best

    def changed(self) -> bool:
        """Whether a parameter was updated in place since ``mark``."""
        return any(p._version != version for p, version in self._versions)

    def check_trained_by_the_optimizer(self) -> None:
        """Raise if the model was trained since ``mark`` while the optimizer took no step.

        Raises:
            RuntimeError: Naming the likely cause and the supported way to swap optimizers.
        """
        if self.steps == 0 and self.changed():
            raise RuntimeError(
                "the model's trainable parameters changed since the last tuner.step() but the "
                "tuner's optimizer took no step: another optimizer is training the model (was "
                "the optimizer re-created after building the tuner?). The unfreeze decay and "
                "new param groups go to the tuner's optimizer; hand the new one over with "
                "tuner.set_optimizer(new_optimizer, lr_scheduler=...)"
            )

    @property
    def on_best_weights(self) -> bool:
        """Whether the model still holds the weights the last decision left (best or restored)."""
        return self.on_best and self.steps == 0 and not self.changed()


def _warn_if_unfinished(scheduler: UnfreezeScheduler, watch: TrainingWatch) -> None:
    watch.detach()
    if scheduler.stopped or not scheduler.restore_best_weights or scheduler.best_epoch is None:
        return
    if watch.on_best_weights:
        return
    warnings.warn(
        f"dynft: a DynamicFineTuner was discarded (garbage-collected or the interpreter "
        f"exited) after {scheduler.epoch} epochs without stopping or finish(): the model holds "
        f"its last weights, not the best-validation weights of epoch {scheduler.best_epoch}. "
        "Call tuner.finish() when the loop ends, or use `with DynamicFineTuner(...) as "
        "tuner:`; pass restore_best_weights=False to keep the last weights on purpose",
        RuntimeWarning,
        stacklevel=1,
    )


def warn_when_discarded_unfinished(
    owner: Any, scheduler: UnfreezeScheduler, watch: TrainingWatch
) -> weakref.finalize[..., None]:
    """Warn when ``owner`` dies (or at exit) with a run neither stopped nor finished."""
    return weakref.finalize(owner, _warn_if_unfinished, scheduler, watch)

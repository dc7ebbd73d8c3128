"""What DynamicFineTuning does for each part of a decision (the core's FineTuningActions)."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from dynft_core import FineTuneConfig, UnfreezeScheduler

from .backbone import Backbone
from .freezing import (
    apply_trainable,
    batch_norm_state,
    group_variables,
    restore_trainable_flags,
    trainable_flags,
)
from .optimizer import FineTuningOptimizer, rebuild_step_functions, strategy_scope
from .snapshot import WeightSnapshot, changeable_variables
from .state import CallbackState


class KerasActions:
    """The actions [`carry_out()`][dynft_core.carry_out] calls, on a Keras model.

    A restore waits until the next epoch begins (or training ends): callbacks after
    DynamicFineTuning in the same epoch end (``ModelCheckpoint``, ``BackupAndRestore``) then
    see the weights that epoch trained, and a resume carries the pending restore out.
    """

    model: keras.Model
    config: FineTuneConfig
    backbone: Backbone | None
    groups: list[list[keras.layers.Layer]] | None
    scheduler: UnfreezeScheduler | None
    snapshot: WeightSnapshot
    _batch_norm: list[list[keras.layers.Layer]]
    _optimizer: FineTuningOptimizer | None
    _loaded: CallbackState | None
    _loaded_by_set_state: bool
    _pending: str | None
    _as_given: tuple[list[tuple[keras.layers.Layer, bool]], Any]

    def _install_optimizer(self) -> None:
        model, scheduler, groups = self.model, self.scheduler, self.groups
        assert scheduler is not None and groups is not None
        if self._optimizer is not None and model.optimizer is self._optimizer:
            # The same callback continues in this process (fit raised and is called again).
            apply_trainable(self.backbone, groups, scheduler.num_unfrozen, self._batch_norm)
            rebuild_step_functions(model)
            return
        loaded = self._loaded
        with strategy_scope(model):
            optimizer = FineTuningOptimizer.wrap(
                model.optimizer,
                learning_rate=loaded.learning_rate if loaded else None,
                # After BackupAndRestore the step count comes from its checkpoint: leaving
                # the compiled one here is what lets the first epoch tell whether it loaded.
                steps=loaded.train_steps if loaded and self._loaded_by_set_state else None,
            )
            optimizer.scale_learning_rate(scheduler.lr_scale)
            flags = trainable_flags(model)
            self._as_given = (flags, model.optimizer)
            apply_trainable(self.backbone, groups, 0, self._batch_norm)
            if not model.trainable_variables:
                restore_trainable_flags(flags)  # a refused fit leaves the model as it was
                raise ValueError(
                    f"with the backbone frozen, model {model.name!r} has no trainable "
                    "weights: nothing would train until the first unfreeze. Make the head "
                    "trainable"
                )
            optimizer.build(model.trainable_variables)
            for decision in scheduler.history:
                if decision.newly_unfrozen:
                    apply_trainable(self.backbone, groups, decision.num_unfrozen,
                                    self._batch_norm)  # fmt: skip
                    optimizer.add_group(self._variables_of(decision.newly_unfrozen),
                                        self.config.unfrozen_lr_ratio,
                                        model.trainable_variables)  # fmt: skip
        apply_trainable(self.backbone, groups, scheduler.num_unfrozen, self._batch_norm)
        model.optimizer = self._optimizer = optimizer
        rebuild_step_functions(model)

    def _undo_install(self) -> None:
        """Give the model back its trainable flags and optimizer, as they were before fit."""
        flags, optimizer = self._as_given
        restore_trainable_flags(flags)
        self.model.optimizer, self._optimizer = optimizer, None
        rebuild_step_functions(self.model)

    def _variables_of(self, indices: tuple[int, ...]) -> list[keras.Variable]:
        assert self.groups is not None
        return [
            variable
            for index in indices
            for variable in group_variables(self.groups[index], self._batch_norm[index])
        ]

    def capture_best(self) -> None:
        """Copy the weights training can change (the best epoch's)."""
        assert self.scheduler is not None
        self.snapshot.capture(changeable_variables(self.model), self.scheduler.epoch)

    def unfreeze(self, groups: tuple[int, ...], lr_ratio: float) -> None:
        """Make ``groups`` trainable under a new optimizer at ``lr_ratio`` x the head's rate."""
        assert self.scheduler is not None and self._optimizer is not None
        variables = self._variables_of(groups)
        if not self.snapshot.empty:
            # Frozen since the snapshot, their values now are the best epoch's.
            moving = [v for i in groups for v in batch_norm_state(self._batch_norm[i])]
            self.snapshot.extend(variables + moving)
        apply_trainable(self.backbone, self.groups, self.scheduler.num_unfrozen, self._batch_norm)
        with strategy_scope(self.model):
            self._optimizer.add_group(variables, lr_ratio, self.model.trainable_variables)
        rebuild_step_functions(self.model)

    def scale_learning_rate(self, factor: float) -> None:
        """Multiply every group's rate by ``factor`` (the base rate is left to the user)."""
        assert self._optimizer is not None
        self._optimizer.scale_learning_rate(factor)

    def restore_best(self, diverged: bool) -> None:
        """Restore the best snapshot before the next epoch trains (or now, at the end)."""
        self._pending = "diverged" if diverged or self._pending == "diverged" else "rollback"

    def stop_training(self) -> None:
        """End ``fit`` after this epoch."""
        self.model.stop_training = True

    def _carry_out_pending_restore(self) -> None:
        if self._pending is None:
            return
        assert self._optimizer is not None
        diverged, self._pending = self._pending == "diverged", None
        if self.snapshot.empty:
            best_epoch = self.scheduler.best_epoch if self.scheduler else None
            warnings.warn(
                f"dynft: the best weights of epoch {best_epoch} are not in memory (state "
                "resumed without backup_dir); keeping the current weights",
                stacklevel=3,
            )
        else:
            self.snapshot.restore()
        if diverged:
            self._optimizer.reset_state()
        self._optimizer.sync_moving_averages()

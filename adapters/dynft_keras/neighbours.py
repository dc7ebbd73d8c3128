"""The other callbacks of the same ``fit``: orders that cannot work, and schedulers to follow.

Keras gives a callback no handle on its neighbours; the ``CallbackList`` that runs
``on_train_begin`` holds them, so it is looked up on the call stack. When ``fit`` is driven
some other way the list is not found and these checks are skipped (the resume checks still
catch a wrong order at resume).
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import keras

from .optimizer import FineTuningOptimizer


def callbacks_of_this_fit(callback: keras.callbacks.Callback) -> list[Any] | None:
    """The callbacks of the ``fit`` now calling ``callback.on_train_begin``, in order."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.callbacks.CallbackList) and any(
                other is callback for other in owner.callbacks
            ):
                return list(owner.callbacks)
            frame = frame.f_back
    finally:
        del frame
    return None


def check_order(
    callback: keras.callbacks.Callback,
    callbacks: list[Any],
    backup_dir: str | os.PathLike[str] | None,
) -> None:
    """Refuse a ``BackupAndRestore`` that cannot resume with dynft; warn about EarlyStopping.

    Raises:
        RuntimeError: A ``BackupAndRestore`` is listed before the callback (it would save each
            epoch before the decision), uses another folder than ``backup_dir`` or none is
            given, or saves mid-epoch.
    """
    position = next(i for i, other in enumerate(callbacks) if other is callback)
    for index, other in enumerate(callbacks):
        if isinstance(other, keras.callbacks.BackupAndRestore):
            if index < position:
                raise RuntimeError(
                    "BackupAndRestore is listed before DynamicFineTuning: it would save every "
                    "epoch before the decision is carried out, so a resume would load the "
                    "wrong trainable set and optimizer; list DynamicFineTuning first"
                )
            if backup_dir is None or Path(other.backup_dir).resolve() != Path(backup_dir).resolve():
                raise RuntimeError(
                    f"BackupAndRestore saves to {other.backup_dir!r} but DynamicFineTuning's "
                    f"backup_dir is {backup_dir!r}: a resume would restart the fine-tuning from "
                    "scratch on resumed weights; pass backup_dir= the same folder"
                )
            if other.save_freq != "epoch":
                raise RuntimeError(
                    f"BackupAndRestore(save_freq={other.save_freq!r}) saves inside epochs, "
                    "where DynamicFineTuning has no matching state; use save_freq='epoch'"
                )
        if (
            isinstance(other, keras.callbacks.EarlyStopping)
            and other.restore_best_weights
            and index > position
        ):
            warnings.warn(
                "EarlyStopping(restore_best_weights=True) is listed after DynamicFineTuning: "
                "at the end it restores its own best weights over DynamicFineTuning's; list "
                "it before, or pass restore_best_weights=False to it",
                UserWarning,
                stacklevel=3,
            )


class _BaseRate:
    """A LearningRateScheduler's schedule run on the base rate, the unfreezes' decay on top.

    The scheduler sets the rate every epoch; run as is, a schedule of the epoch alone would
    erase the decay. Wrapped, it sees and returns the rate without the decay, which is then
    applied to what it returns: the undisturbed schedule x the cumulative factor.
    """

    def __init__(self, schedule: Any, optimizer: FineTuningOptimizer) -> None:
        self.schedule = schedule
        self.optimizer = optimizer

    def __call__(self, epoch: int, learning_rate: float | None = None) -> float:
        factor = self.optimizer.rate_factor
        if learning_rate is None:
            return float(self.schedule(epoch)) * factor
        try:
            value = self.schedule(epoch, learning_rate / factor)
        except TypeError:  # a schedule of the epoch alone, as Keras itself falls back
            value = self.schedule(epoch)
        return float(value) * factor


def follow_schedulers(callbacks: list[Any], optimizer: FineTuningOptimizer) -> list[Any]:
    """Run every ``LearningRateScheduler`` on the base rate; returns them (to release them)."""
    schedulers = [c for c in callbacks if isinstance(c, keras.callbacks.LearningRateScheduler)]
    for scheduler in schedulers:
        release_scheduler(scheduler)
        scheduler.schedule = _BaseRate(scheduler.schedule, optimizer)
    return schedulers


def release_scheduler(scheduler: keras.callbacks.LearningRateScheduler) -> None:
    """Give a scheduler its own schedule back."""
    while isinstance(scheduler.schedule, _BaseRate):
        scheduler.schedule = scheduler.schedule.schedule

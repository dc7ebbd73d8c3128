"""The callback's JSON state, and checking a saved one completely before any of it is used."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynft_core import FineTuneConfig, UnfreezeScheduler
from dynft_core.state_check import check_envelope

from .rates import LearningRate, deserialize_learning_rate, serialize_learning_rate

STATE_VERSION = 2
PENDING = (None, "rollback", "diverged")
_KEYS = ("version", "options", "num_groups", "scheduler", "learning_rate", "train_steps",
         "snapshot_epoch", "pending_restore")  # fmt: skip


@dataclass(frozen=True)
class CallbackState:
    """Everything a [`DynamicFineTuning`][dynft_keras.DynamicFineTuning] resumes from.

    Attributes:
        scheduler: The decisions so far.
        learning_rate: The base rate of ``model.optimizer`` (a float or a schedule; ``None``
            before a fit set one up: the compiled rate is kept).
        train_steps: Steps ``model.optimizer`` had taken (a schedule's clock).
        snapshot_epoch: Epoch of the best snapshot the state was saved with, or ``None``.
        pending_restore: A restore decided at the last epoch end and not yet carried out
            (it happens before the next epoch trains): ``"rollback"``, ``"diverged"`` (also
            reset the optimizers' state) or ``None``.
    """

    scheduler: UnfreezeScheduler
    learning_rate: LearningRate | None
    train_steps: int
    snapshot_epoch: int | None
    pending_restore: str | None

    def to_dict(self, config: FineTuneConfig) -> dict[str, Any]:
        """JSON-plain form (``json.dumps`` works on it)."""
        return {
            "version": STATE_VERSION,
            "options": config.to_dict(),
            "num_groups": self.scheduler.num_groups,
            "scheduler": self.scheduler.state_dict(),
            "learning_rate": serialize_learning_rate(self.learning_rate),
            "train_steps": self.train_steps,
            "snapshot_epoch": self.snapshot_epoch,
            "pending_restore": self.pending_restore,
        }


def _bad(key: str, problem: str) -> ValueError:
    return ValueError(f"invalid DynamicFineTuning state: {key!r} {problem}")


def parse_state(state: object, config: FineTuneConfig, num_groups: int) -> CallbackState:
    """Check ``state`` (from ``get_state()``) against this callback; nothing is changed.

    Raises:
        ValueError: The first problem found, naming the key: another version, a missing or
            unknown key, options or group count that differ from this callback's, or a value
            of the wrong type or inconsistent with the scheduler's history.
    """
    state = check_envelope(state, "DynamicFineTuning", _KEYS, STATE_VERSION)
    try:
        saved_options = FineTuneConfig.from_dict(state["options"])
    except (TypeError, ValueError) as err:
        raise _bad("options", str(err)) from None
    for key, value in config.to_dict().items():
        saved = getattr(saved_options, key)
        if key != "max_epochs" and saved != value:
            raise ValueError(
                f"state was saved with {key}={saved!r} but this callback has {key}={value!r}; "
                "construct it with the saved options"
            )
    if state["num_groups"] != num_groups:
        raise _bad("num_groups", f"is {state['num_groups']!r} but this callback has "
                   f"{num_groups} groups")  # fmt: skip
    scheduler = _scheduler(state["scheduler"], config, num_groups)
    try:
        learning_rate = deserialize_learning_rate(state["learning_rate"])
    except ValueError as err:
        raise _bad("learning_rate", str(err)) from None
    steps = state["train_steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise _bad("train_steps", f"must be an integer >= 0, got {steps!r}")
    snapshot_epoch = state["snapshot_epoch"]
    if snapshot_epoch not in (None, scheduler.best_epoch) or isinstance(snapshot_epoch, bool):
        raise _bad("snapshot_epoch", f"is {snapshot_epoch!r} but the best epoch is "
                   f"{scheduler.best_epoch}")  # fmt: skip
    pending = state["pending_restore"]
    if pending not in PENDING or isinstance(pending, bool):
        raise _bad("pending_restore", f"must be one of {PENDING}, got {pending!r}")
    if pending is not None:
        last = scheduler.history[-1] if scheduler.history else None
        if last is None or not last.restore_best or last.diverged != (pending == "diverged"):
            raise _bad("pending_restore", f"is {pending!r} but the last decision does not "
                       "restore that way")  # fmt: skip
    return CallbackState(scheduler, learning_rate, steps, snapshot_epoch, pending)


def _scheduler(saved: object, config: FineTuneConfig, num_groups: int) -> UnfreezeScheduler:
    saved_config = saved.get("config") if isinstance(saved, Mapping) else None
    budget = saved_config.get("max_epochs") if isinstance(saved_config, Mapping) else None
    if config.max_epochs is not None:
        budget = config.max_epochs
    try:
        scheduler = dataclasses.replace(config, max_epochs=budget).scheduler(num_groups, budget)
    except (TypeError, ValueError) as err:
        raise _bad("scheduler.config.max_epochs", str(err)) from None
    try:
        scheduler.load_state_dict(saved)  # type: ignore[arg-type]
    except ValueError as err:
        raise _bad("scheduler", str(err)) from None
    return scheduler

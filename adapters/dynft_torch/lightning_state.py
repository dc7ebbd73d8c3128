"""The Lightning callback's state in a checkpoint, checked before any of it is used.

Lightning writes the callback state into the same file as the weights, the optimizer and the
loops, so the two cannot come from different epochs as separate files can. What can still
disagree: a checkpoint written while a validation ran, before dynft's decision for it (a signal
handler, a callback saving in ``on_validation_*`` ahead of DynamicFineTuning); such a state
records more validations started than decided. The state also carries a restore decided but
not carried out yet (see [`LightningTuner`][dynft_torch.lightning_tuner.LightningTuner]).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynft_core.state_check import check_envelope

from .lightning_tuner import PENDING_RESTORES, LightningTuner

STATE_FORMAT = "dynft_torch.lightning.DynamicFineTuning"
STATE_VERSION = 1
_KEYS = ("format", "version", "tuner", "pending_restore", "validations")


def callback_state(tuner: LightningTuner, validations: int) -> dict[str, Any]:
    """``DynamicFineTuning.state_dict()``: the tuner's state, the pending restore and the
    number of validations the Trainer has started."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "tuner": tuner.state_dict(),
        "pending_restore": tuner.pending_restore,
        "validations": validations,
    }


@dataclass(frozen=True)
class SavedState:
    """A callback state whose own fields are checked (the tuner's are checked on loading)."""

    tuner: Mapping[str, Any]
    pending_restore: str | None
    validations: int

    @property
    def stopped(self) -> bool:
        scheduler = self.tuner.get("scheduler")
        return isinstance(scheduler, Mapping) and scheduler.get("stopped") is True

    def decisions(self) -> int | None:
        scheduler = self.tuner.get("scheduler")
        epoch = scheduler.get("epoch") if isinstance(scheduler, Mapping) else None
        return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _fail(key: str, problem: str) -> ValueError:
    return ValueError(f"invalid DynamicFineTuning state: {key!r} {problem}")


def parse_state(state: object) -> SavedState:
    """Check the callback's own fields.

    Raises:
        ValueError: Not a state of this format and version, a missing or unknown key, or a bad
            value (the message names the key).
    """
    state = check_envelope(state, "DynamicFineTuning", _KEYS, STATE_VERSION, STATE_FORMAT)
    tuner, pending, validations = state["tuner"], state["pending_restore"], state["validations"]
    if not isinstance(tuner, Mapping):
        raise _fail("tuner", f"must be a dict, got {type(tuner).__name__}")
    if pending not in PENDING_RESTORES or isinstance(pending, bool):
        raise _fail("pending_restore", f"must be one of {PENDING_RESTORES}, got {pending!r}")
    if not isinstance(validations, int) or isinstance(validations, bool) or validations < 0:
        raise _fail("validations", f"must be an integer >= 0, got {validations!r}")
    return SavedState(tuner, pending, validations)


def check_pending_restore(saved: SavedState) -> None:
    """A pending restore must come from the last decision, which asked for it.

    Call it after the tuner state was checked (its history is then well formed).

    Raises:
        ValueError: The pending restore does not match the last decision.
    """
    if saved.pending_restore is None:
        return
    history = saved.tuner["scheduler"]["history"]
    last = history[-1] if history else None
    if (
        last is None
        or not last["restore_best"]
        or last["diverged"] != (saved.pending_restore == "diverged")
    ):
        raise _fail(
            "pending_restore",
            f"is {saved.pending_restore!r} but the last decision did not ask for that restore",
        )


def with_budget(tuner_state: Mapping[str, Any], budget: int | None) -> Mapping[str, Any]:
    """The tuner state continued under this fit's budget (a resumed fit may change
    ``max_epochs``; the run keeps its decisions so far).

    Raises:
        ValueError: The saved run has taken more decisions than ``budget`` allows.
    """
    scheduler = tuner_state.get("scheduler")
    config = scheduler.get("config") if isinstance(scheduler, Mapping) else None
    if not isinstance(config, Mapping) or config.get("max_epochs") == budget:
        return tuner_state
    epoch = scheduler.get("epoch")
    if budget is not None and isinstance(epoch, int) and epoch > budget:
        raise ValueError(
            f"the checkpoint's dynft run has decided after {epoch} validations, beyond this "
            f"fit's budget of {budget} validations; raise the Trainer's max_epochs (or pass "
            "max_epochs=) to resume it"
        )
    return {**tuner_state, "scheduler": {**scheduler, "config": {**config, "max_epochs": budget}}}

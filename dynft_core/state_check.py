"""Checking a saved scheduler state completely before any of it is used.

A resume that continues from a state that cannot have been produced by a run (``wait`` above
``patience``, a stopped flag written as the string ``"false"``, more unfrozen groups than
unfreezes allow) would take wrong decisions without a word. Every field is checked here, alone
and against the others, and the checked values are returned for the caller to assign in one go,
so a state that fails changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .decision import Decision
from .plateau import PlateauMonitor

STATE_VERSION = 2
_KEYS = ("version", "config", "monitor", "num_unfrozen", "num_unfreezes", "epoch", "stopped",
         "history")  # fmt: skip


class _Bad(ValueError):
    pass


def _fail(key: str, problem: str) -> _Bad:
    return _Bad(f"invalid scheduler state: {key!r} {problem}")


def check_envelope(
    state: object, kind: str, keys: Sequence[str], version: int, state_format: str | None = None
) -> Mapping[str, Any]:
    """The checks every saved dynft state starts with: a dict of this format and version that
    holds exactly ``keys``.

    Args:
        state: What was loaded.
        kind: The state's name in messages (``"tuner"``, ``"DynamicFineTuning"``).
        keys: Every key the state must hold, and the only ones.
        version: The version this code reads.
        state_format: The ``"format"`` entry the state must carry, if it has one.

    Returns:
        ``state``, as a mapping.

    Raises:
        ValueError: Not a dict, another format or version, or a missing or unknown key (the
            message names the first).
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"a {kind} state must be a dict, got {type(state).__name__}")
    if state_format is not None and (
        state.get("format") != state_format or state.get("version") != version
    ):
        raise ValueError(
            f"not a {state_format} state of version {version}: got format "
            f"{state.get('format')!r}, version {state.get('version')!r}"
        )
    if state.get("version") != version:
        raise ValueError(
            f"unsupported {kind} state version {state.get('version')!r}; expected {version}"
        )
    missing = [key for key in keys if key not in state]
    unknown = sorted(set(state) - set(keys))
    if missing or unknown:
        key, problem = (missing[0], "is missing") if missing else (unknown[0], "is unknown")
        raise ValueError(f"invalid {kind} state: {key!r} {problem}")
    return state


def _count(state: Mapping[str, Any], key: str) -> int:
    value = state[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(key, f"must be an integer >= 0, got {value!r}")
    return value


def _monitor(saved: object, config: Mapping[str, Any], epoch: int) -> PlateauMonitor:
    if not isinstance(saved, Mapping) or set(saved) != {"best", "best_epoch", "wait"}:
        raise _fail("monitor", f"must be a dict with best, best_epoch and wait, got {saved!r}")
    best, best_epoch, wait = saved["best"], saved["best_epoch"], saved["wait"]
    if (best is None) != (best_epoch is None):
        raise _fail("monitor", f"has best={best!r} but best_epoch={best_epoch!r}")
    if best is not None and (
        not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best)
    ):
        raise _fail("monitor.best", f"must be a finite number or null, got {best!r}")
    if best_epoch is not None and (
        not isinstance(best_epoch, int)
        or isinstance(best_epoch, bool)
        or not 1 <= best_epoch <= epoch
    ):
        raise _fail("monitor.best_epoch", f"must be an epoch in 1..{epoch}, got {best_epoch!r}")
    if not isinstance(wait, int) or isinstance(wait, bool) or not 0 <= wait <= config["patience"]:
        raise _fail(
            "monitor.wait", f"must be an integer in 0..patience={config['patience']}, got {wait!r}"
        )
    monitor = PlateauMonitor(mode=config["mode"], min_delta=config["min_delta"])
    monitor.load_state_dict(saved)
    return monitor


def _history(saved: object, epoch: int, num_groups: int) -> list[Decision]:
    if not isinstance(saved, list):
        raise _fail("history", f"must be a list of decisions, got {type(saved).__name__}")
    history = []
    for position, entry in enumerate(saved):
        try:
            history.append(Decision.from_dict(entry))
        except ValueError as err:
            raise _fail(f"history[{position}]", str(err)) from None
    stepped = [d for d in history if not d.external_stop]
    if [d.epoch for d in stepped] != list(range(1, epoch + 1)):
        raise _fail("history", f"must hold one decision per epoch 1..{epoch}, in order")
    for position, decision in enumerate(history):
        if decision.external_stop and position != len(history) - 1:
            raise _fail(f"history[{position}]", "is a finish() decision before the end")
        if any(i >= num_groups for i in decision.newly_unfrozen + decision.trainable_groups):
            raise _fail(f"history[{position}]", f"names a group >= num_groups={num_groups}")
    return history


def load_checked_state(
    state: object, config: Mapping[str, Any]
) -> tuple[PlateauMonitor, int, int, int, bool, list[Decision]]:
    """Check a ``UnfreezeScheduler.state_dict()`` against the scheduler's ``config``.

    Returns:
        ``(monitor, num_unfrozen, num_unfreezes, epoch, stopped, history)``, all checked.

    Raises:
        ValueError: The first problem found, naming the key.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"a scheduler state must be a dict, got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"unsupported scheduler state version {state.get('version')!r}; expected "
            f"{STATE_VERSION}"
        )
    missing = [key for key in _KEYS if key not in state]
    if missing:
        raise _fail(missing[0], "is missing")
    saved = state["config"]
    if not isinstance(saved, Mapping):
        raise _fail("config", f"must be a dict, got {saved!r}")
    for key, value in config.items():
        if key not in saved or saved[key] != value or type(saved[key]) is not type(value):
            raise ValueError(
                f"state was saved with {key}={saved.get(key)!r} but this scheduler has "
                f"{key}={value!r}; construct it with the saved configuration"
            )
    extra = sorted(set(saved) - set(config))
    if extra:
        raise _fail("config", f"has keys this scheduler does not know: {extra}")

    num_groups, step = config["num_groups"], config["step"]
    epoch = _count(state, "epoch")
    num_unfrozen = _count(state, "num_unfrozen")
    num_unfreezes = _count(state, "num_unfreezes")
    stopped = state["stopped"]
    if not isinstance(stopped, bool):
        raise _fail("stopped", f"must be true or false, got {stopped!r}")
    if config["max_epochs"] is not None and epoch > config["max_epochs"]:
        raise _fail("epoch", f"is {epoch}, beyond max_epochs={config['max_epochs']}")
    if num_unfrozen != min(num_unfreezes * step, num_groups) or (
        num_unfreezes > 0 and (num_unfreezes - 1) * step >= num_groups
    ):
        raise _fail(
            "num_unfrozen",
            f"is {num_unfrozen} after num_unfreezes={num_unfreezes} of step={step} "
            f"with num_groups={num_groups}",
        )
    monitor = _monitor(state["monitor"], config, epoch)
    history = _history(state["history"], epoch, num_groups)

    if history:
        last = history[-1]
        if last.num_unfrozen != num_unfrozen:
            raise _fail("num_unfrozen", f"is {num_unfrozen} but the last decision has "
                        f"{last.num_unfrozen}")  # fmt: skip
        if last.stop != stopped:
            raise _fail("stopped", f"is {stopped} but the last decision has stop={last.stop}")
    elif stopped or num_unfrozen:
        raise _fail("history", "is empty but the state is stopped or has unfrozen groups")
    unfreezes = sum(1 for d in history if d.newly_unfrozen)
    if unfreezes != num_unfreezes:
        raise _fail("num_unfreezes", f"is {num_unfreezes} but history unfroze {unfreezes} times")
    if monitor.best_epoch is not None:
        best_decision = history[monitor.best_epoch - 1]
        if not best_decision.improved or best_decision.value != monitor.best:
            raise _fail("monitor.best", f"does not match the decision of epoch "
                        f"{monitor.best_epoch}")  # fmt: skip
    if monitor.wait == config["patience"] and not stopped:
        raise _fail("monitor.wait", "has reached patience in a scheduler that did not stop")
    return monitor, num_unfrozen, num_unfreezes, epoch, stopped, history

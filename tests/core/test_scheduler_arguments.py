"""Argument checking: constructor ranges, monitored-value types, and state loading."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from dynft_core import PlateauMonitor, UnfreezeScheduler

VALID = {
    "num_groups": 4,
    "patience": 2,
    "step": 3,
    "decay": 0.1,
    "max_epochs": 10,
    "min_delta": 0.0,
    "mode": "min",
}

# (argument, rejected value, fragment of the message that states the allowed range)
INVALID: list[tuple[str, object, str]] = [
    *[
        (name, bad, ">= 1")
        for name in ("num_groups", "patience", "step", "max_epochs")
        for bad in (0, -1, True, False, 2.0, 2.5, "3", None, math.nan)
        if not (name == "max_epochs" and bad is None)  # None: no epoch budget
    ],
    *[("restore_best_weights", bad, "True or False") for bad in (0, 1, "false", None)],
    *[
        ("decay", bad, "0 <= decay < 1")
        for bad in (1.0, 1, 1.5, -0.1, -1e-12, math.nan, math.inf, True, False, "0.1", None)
    ],
    *[
        ("min_delta", bad, ">= 0")
        for bad in (-1e-9, -1, math.nan, math.inf, -math.inf, True, False, "0", None)
    ],
    *[("mode", bad, "'min' or 'max'") for bad in ("MIN", "Max", "", "minimum", None, True, 0)],
]


@pytest.mark.parametrize(("name", "bad", "allowed"), INVALID, ids=repr)
def test_invalid_argument_is_named_with_its_range(name: str, bad: object, allowed: str) -> None:
    with pytest.raises(ValueError) as caught:
        UnfreezeScheduler(**{**VALID, name: bad})
    message = str(caught.value)
    assert message.startswith(name), message
    assert allowed in message, message


def test_num_groups_is_positional() -> None:
    with pytest.raises(ValueError, match="num_groups"):
        UnfreezeScheduler(0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_groups": 1, "patience": 1, "step": 1, "max_epochs": 1},
        {"decay": 0.0, "min_delta": 0.0},
        {"decay": 0.999999, "min_delta": 1e300, "mode": "max"},
        {"num_groups": np.int64(7), "patience": np.int32(2), "decay": np.float32(0.25)},
        {"min_delta": Fraction(1, 3), "decay": Fraction(1, 2)},
    ],
    ids=repr,
)
def test_boundary_and_numpy_arguments_are_accepted(overrides: dict[str, Any]) -> None:
    s = UnfreezeScheduler(**{**VALID, **overrides})
    assert type(s.num_groups) is int and type(s.patience) is int
    assert type(s.decay) is float and type(s.min_delta) is float
    json.dumps(s.state_dict(), allow_nan=False)


def test_defaults_follow_the_issue() -> None:
    s = UnfreezeScheduler(8)
    assert s.config() == {
        "num_groups": 8,
        "patience": 5,
        "step": 3,
        "decay": 0.1,
        "max_epochs": 100,
        "min_delta": 0.0,
        "mode": "min",
        "restore_best_weights": True,
    }
    assert (s.num_unfrozen, s.epoch, s.wait, s.lr_scale, s.stopped) == (0, 0, 0, 1.0, False)
    assert s.trainable_groups == () and s.history == []


@pytest.mark.parametrize(
    "value",
    [
        "x",
        "1.0",
        b"1",
        None,
        [1, 2],
        [1.0],
        (0.5,),
        {},
        True,
        False,
        1j,
        ...,
        np.array([1.0, 2.0]),
        np.bool_(True),
        np.complex128(1.0),
    ],
    ids=repr,
)
def test_non_number_value_raises_type_error_and_changes_nothing(value: object) -> None:
    s = UnfreezeScheduler(**VALID)
    s.step(1.0)
    before = s.state_dict()
    with pytest.raises(TypeError, match="monitored value"):
        s.step(value)
    assert s.state_dict() == before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float64(0.5), 0.5),
        (np.float32(0.25), 0.25),
        (np.float16(2.0), 2.0),
        (np.int64(3), 3.0),
        (np.array(0.75), 0.75),
        (np.array(1, dtype=np.int32), 1.0),
        (Fraction(1, 4), 0.25),
        (Decimal("0.5"), 0.5),
        (7, 7.0),
    ],
    ids=repr,
)
def test_numbers_numpy_scalars_and_zero_d_arrays_are_accepted(
    value: object, expected: float
) -> None:
    decision = UnfreezeScheduler(**VALID).step(value)
    assert decision.improved and type(decision.value) is float and decision.value == expected


@pytest.mark.parametrize("value", [np.float32("nan"), np.array(np.inf), np.float64(-np.inf)])
def test_numpy_non_finite_values_are_no_improvement(value: object) -> None:
    decision = UnfreezeScheduler(**VALID).step(value)
    assert not decision.improved and not decision.stop


@pytest.mark.parametrize(("huge", "as_float"), [(10**400, math.inf), (-(10**400), -math.inf)])
def test_integers_beyond_float_range_count_as_infinite(huge: int, as_float: float) -> None:
    s = UnfreezeScheduler(**VALID)
    assert s.step(huge).value == as_float
    assert s.best_epoch is None


def _saved(**config: Any) -> dict[str, Any]:
    s = UnfreezeScheduler(**{**VALID, **config})
    for value in (1.0, 0.5, 0.7, 0.8):
        s.step(value)
    return json.loads(json.dumps(s.state_dict()))


@pytest.mark.parametrize(
    ("key", "other"),
    [
        ("num_groups", 5),
        ("patience", 3),
        ("step", 1),
        ("decay", 0.2),
        ("max_epochs", 11),
        ("min_delta", 0.01),
        ("mode", "max"),
        ("max_epochs", None),
        ("restore_best_weights", False),
    ],
)
def test_loading_a_state_of_another_configuration_names_the_key(key: str, other: object) -> None:
    target = UnfreezeScheduler(**{**VALID, key: other})
    untouched = target.state_dict()
    with pytest.raises(ValueError, match=rf"\b{key}="):
        target.load_state_dict(_saved())
    assert target.state_dict() == untouched


def _with(state: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    changed = json.loads(json.dumps(state))
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return changed


_DELETE = object()

# (path into the state of _saved(), a bad value, the key the message must name)
BAD_STATES: list[tuple[str, object, str]] = [
    ("version", 99, "version"),
    ("version", "2", "version"),
    ("num_unfrozen", VALID["num_groups"] + 1, "num_unfrozen"),
    ("num_unfrozen", -1, "num_unfrozen"),
    ("num_unfrozen", 1, "num_unfrozen"),
    ("num_unfrozen", "3", "num_unfrozen"),
    ("num_unfreezes", 2, "num_unfrozen"),
    ("num_unfreezes", True, "num_unfreezes"),
    ("epoch", 11, "epoch"),
    ("epoch", 5, "history"),
    ("epoch", -1, "epoch"),
    ("epoch", 4.0, "epoch"),
    ("stopped", "false", "stopped"),
    ("stopped", 0, "stopped"),
    ("stopped", True, "stopped"),
    ("monitor.wait", -3, "monitor.wait"),
    ("monitor.wait", 9, "monitor.wait"),
    ("monitor.wait", 2, "monitor.wait"),
    ("monitor.best", "0.5", "monitor.best"),
    ("monitor.best", 0.25, "monitor.best"),
    ("monitor.best", None, "monitor"),
    ("monitor.best_epoch", 9, "monitor.best_epoch"),
    ("monitor.best_epoch", 1, "monitor.best"),
    ("monitor", [], "monitor"),
    ("monitor.wait", _DELETE, "monitor"),
    ("history", {}, "history"),
    ("history.0", "epoch 1", "history[0]"),
    ("history.0.epoch", 2, "history"),
    ("history.1.improved", "yes", "history[1]"),
    ("history.1.newly_unfrozen", [7], "history[1]"),
    ("history.3.stop", 1, "history[3]"),
    ("history.3.lr_factor", None, "history[3]"),
    ("history.2.reason", 3, "history[2]"),
    ("history.0.extra", 1, "history[0]"),
    ("history.0.diverged", _DELETE, "history[0]"),
    ("config.decay", "0.1", "decay"),
    ("config.surprise", 1, "config"),
    ("config", None, "config"),
    ("history", _DELETE, "history"),
    ("stopped", _DELETE, "stopped"),
]


@pytest.mark.parametrize(("path", "bad", "named"), BAD_STATES, ids=repr)
def test_a_bad_state_is_refused_naming_the_key_and_changes_nothing(
    path: str, bad: object, named: str
) -> None:
    saved = _saved()
    target = UnfreezeScheduler(**VALID)
    target.step(3.0)
    untouched = target.state_dict()
    with pytest.raises(ValueError) as caught:
        target.load_state_dict(_with(saved, path, bad))
    assert named in str(caught.value), str(caught.value)
    assert target.state_dict() == untouched
    target.load_state_dict(saved)  # the unchanged state still loads
    assert target.state_dict() == saved


def test_loading_something_that_is_not_a_state() -> None:
    with pytest.raises(ValueError, match="must be a dict"):
        UnfreezeScheduler(**VALID).load_state_dict([1, 2])  # type: ignore[arg-type]


def test_round_trip_of_a_stopped_scheduler_keeps_it_stopped() -> None:
    s = UnfreezeScheduler(1, patience=2, step=1, max_epochs=3)
    for value in (math.nan, math.nan, math.inf):
        s.step(value)
    assert s.stopped
    text = json.dumps(s.state_dict(), allow_nan=False)
    restored = UnfreezeScheduler(1, patience=2, step=1, max_epochs=3)
    restored.load_state_dict(json.loads(text))
    assert restored.stopped and restored.history == s.history
    assert restored.best == math.inf and restored.best_epoch is None
    assert math.isnan(restored.history[0].value)
    with pytest.raises(RuntimeError):
        restored.step(1.0)


def test_plateau_monitor_on_its_own() -> None:
    monitor = PlateauMonitor(mode="max", min_delta=0.5)
    assert [monitor.update(v, e) for e, v in enumerate([1.0, 1.5, 1.4, math.nan, 2.0], 1)] == [
        True,
        False,
        False,
        False,
        True,
    ]
    assert (monitor.best, monitor.best_epoch, monitor.wait) == (2.0, 5, 0)
    monitor.update(0.0, 6)
    monitor.reset_wait()
    assert monitor.wait == 0 and monitor.best == 2.0
    copy = PlateauMonitor(mode="max", min_delta=0.5)
    copy.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert (copy.best, copy.best_epoch, copy.wait) == (2.0, 5, 0)
    with pytest.raises(ValueError, match="mode"):
        PlateauMonitor(mode="avg")

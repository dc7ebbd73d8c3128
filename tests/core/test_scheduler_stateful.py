"""Property-based tests: random value streams against an independent model of Algorithm 1.

The reference model below is written straight from the semantics of Algorithm 1, as plainly
as possible, so that a disagreement points at the scheduler rather than at shared code.
The Hypothesis profile (``tests/conftest.py``) sets the number of examples: 500 in CI.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dynft_core import Decision, UnfreezeScheduler


@dataclass
class Expected:
    """What the reference model says one ``step`` must decide."""

    improved: bool
    num_unfrozen: int
    newly_unfrozen: tuple[int, ...]
    lr_factor: float
    restore_best: bool
    stop: bool


@dataclass
class ReferenceAlgorithm1:
    """Algorithm 1 of the paper, one epoch at a time, with no shortcuts."""

    num_groups: int
    patience: int
    step_size: int
    decay: float
    max_epochs: int | None
    min_delta: float
    mode: str
    restore_best_weights: bool
    epoch: int = 0
    num_unfrozen: int = 0
    unfreezes: int = 0
    best: float | None = None
    best_epoch: int | None = None
    counter: int = 0
    finished: bool = False
    finite_values: list[float] = field(default_factory=list)

    def is_new_best(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float) -> Expected:
        self.epoch += 1
        if math.isfinite(value):
            self.finite_values.append(value)
        improved = self.is_new_best(value)
        if improved:
            self.best, self.best_epoch, self.counter = value, self.epoch, 0
        else:
            self.counter += 1

        newly: tuple[int, ...] = ()
        lr_factor = 1.0
        stop = False
        if self.counter >= self.patience:
            if self.num_unfrozen < self.num_groups:
                old = self.num_unfrozen
                self.num_unfrozen = min(old + self.step_size, self.num_groups)
                deepest_old = set(range(self.num_groups - old, self.num_groups))
                deepest_new = set(range(self.num_groups - self.num_unfrozen, self.num_groups))
                newly = tuple(sorted(deepest_new - deepest_old))
                lr_factor = 1 - self.decay
                self.unfreezes += 1
                self.counter = 0
            else:
                stop = True
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            stop = True
        self.finished = stop
        has_best = self.best is not None
        # a non-finite epoch is rolled back at once; the end restores unless opted out
        diverged = not math.isfinite(value)
        wants_best = bool(newly) or diverged or (stop and self.restore_best_weights)
        return Expected(
            improved=improved,
            num_unfrozen=self.num_unfrozen,
            newly_unfrozen=newly,
            lr_factor=lr_factor,
            restore_best=wants_best and has_best,
            stop=stop,
        )

    def finish(self) -> Expected:
        """Something else ended training: restore the best unless opted out (or none)."""
        was_finished, self.finished = self.finished, True
        return Expected(
            improved=False,
            num_unfrozen=self.num_unfrozen,
            newly_unfrozen=(),
            lr_factor=1.0,
            restore_best=not was_finished and self.restore_best_weights and self.best is not None,
            stop=True,
        )


# A small pool makes exact repeats (ties with the best) frequent; the rest covers the range.
REPEATED_VALUES = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, -1.0])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
ANY_FINITE = st.floats(allow_nan=False, allow_infinity=False)
MONITORED_VALUES = st.one_of(
    REPEATED_VALUES,
    NON_FINITE,
    st.floats(min_value=-10, max_value=10),
    ANY_FINITE,
    st.integers(min_value=-5, max_value=5),
)
CONFIGS = st.fixed_dictionaries(
    {
        "num_groups": st.integers(min_value=1, max_value=12),
        "patience": st.integers(min_value=1, max_value=5),
        "step": st.integers(min_value=1, max_value=6),
        "decay": st.one_of(
            st.sampled_from([0.0, 0.1, 0.5]),
            st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
        ),
        "max_epochs": st.one_of(st.integers(min_value=1, max_value=40), st.none()),
        "min_delta": st.one_of(st.just(0.0), st.sampled_from([0.1, 0.25, 1.0]), st.floats(0, 3)),
        "mode": st.sampled_from(["min", "max"]),
        "restore_best_weights": st.booleans(),
    }
)


class SchedulerMachine(RuleBasedStateMachine):
    """Steps a scheduler, the reference model and (after a clone) a restored copy in lockstep."""

    scheduler: UnfreezeScheduler
    reference: ReferenceAlgorithm1
    clone: UnfreezeScheduler | None

    @initialize(config=CONFIGS)
    def start(self, config: dict[str, Any]) -> None:
        self.begin(config)

    def begin(self, config: dict[str, Any]) -> None:
        self.config = config
        self.scheduler = UnfreezeScheduler(**config)
        self.reference = ReferenceAlgorithm1(
            num_groups=config["num_groups"],
            patience=config["patience"],
            step_size=config["step"],
            decay=config["decay"],
            max_epochs=config["max_epochs"],
            min_delta=config["min_delta"],
            mode=config["mode"],
            restore_best_weights=config["restore_best_weights"],
        )
        self.clone = None
        self.previous_unfrozen = 0

    def apply(self, value: float) -> None:
        decision = self.scheduler.step(value)
        expected = self.reference.step(float(value))
        self.check_decision(decision, expected)
        if self.clone is not None:
            # the restored copy must take exactly the same decision, reason included
            assert self.clone.step(value) == decision
        if decision.stop:
            # the state is plain JSON at the end of every run (and at every clone)
            json.dumps(self.scheduler.state_dict(), allow_nan=False)
            for stopped in (self.scheduler, self.clone):
                if stopped is not None:
                    try:
                        stopped.step(0.0)
                    except RuntimeError:
                        pass
                    else:
                        raise AssertionError("step() after stop did not raise RuntimeError")

    def check_decision(self, decision: Decision, expected: Expected) -> None:
        s, ref = self.scheduler, self.reference
        assert decision.epoch == ref.epoch == s.epoch
        assert decision.improved is expected.improved
        assert decision.num_unfrozen == expected.num_unfrozen == s.num_unfrozen
        assert decision.newly_unfrozen == expected.newly_unfrozen
        assert decision.lr_factor == expected.lr_factor
        assert decision.restore_best is expected.restore_best
        assert decision.stop is expected.stop is s.stopped
        assert decision.diverged is (not math.isfinite(float(decision.value)))
        assert not decision.external_stop
        assert decision.trainable_groups == s.trainable_groups
        assert s.history[-1] is decision and len(s.history) == s.epoch
        # Read straight off the history: the misses in a row since the last improvement or
        # unfreeze. Reaching `patience` must unfreeze (if anything is frozen) or stop.
        misses = 0
        for earlier in reversed(s.history):
            if earlier.improved or (earlier.newly_unfrozen and earlier is not decision):
                break
            misses += 1
        assert misses <= s.patience
        unfrozen_before = decision.num_unfrozen - len(decision.newly_unfrozen)
        plateau = misses == s.patience
        assert bool(decision.newly_unfrozen) == (plateau and unfrozen_before < s.num_groups)
        if plateau and unfrozen_before == s.num_groups:
            assert decision.stop
        if decision.newly_unfrozen:
            assert not decision.improved and s.wait == 0
            assert "unfroze group" in decision.reason
        else:
            assert s.wait == ref.counter
        if expected.stop and (s.max_epochs is None or s.epoch < s.max_epochs):
            assert s.num_unfrozen == s.num_groups and s.wait >= s.patience
        assert isinstance(decision.reason, str) and decision.reason

    def advance(self, value: float, data: st.DataObject) -> None:
        """Step everything with ``value``; a stopped run is replaced by a freshly drawn one."""
        if self.scheduler.stopped:
            self.begin(data.draw(CONFIGS, label="next configuration"))
        self.apply(value)

    # Every rule advances the run, so whichever rules Hypothesis disables for an
    # example, the remaining ones still walk the scheduler through its stages.

    @rule(value=MONITORED_VALUES, data=st.data())
    def step_value(self, value: float, data: st.DataObject) -> None:
        """Step with a random value: finite, repeated, NaN or infinite."""
        event("rule step_value")
        self.advance(value, data)

    @rule(
        offset=st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]),
        nudge=st.sampled_from([0.0, 1e-12, -1e-12]),
        data=st.data(),
    )
    def step_near_best(self, offset: float, nudge: float, data: st.DataObject) -> None:
        """Step with a value at or around ``best ± min_delta``, where off-by-one errors hide."""
        event("rule step_near_best")
        anchor = 0.0 if self.reference.best is None else self.reference.best
        self.advance(anchor + offset * self.reference.min_delta + nudge, data)

    @rule(value=MONITORED_VALUES, data=st.data())
    def clone_through_json(self, value: float, data: st.DataObject) -> None:
        """state_dict → JSON text → new scheduler, then both are stepped in lockstep."""
        event("rule clone_through_json")
        state = self.scheduler.state_dict()
        clone = UnfreezeScheduler(**self.config)
        clone.load_state_dict(json.loads(json.dumps(state, allow_nan=False)))
        assert clone.state_dict() == state
        assert clone.history == self.scheduler.history
        for name in ("num_unfrozen", "epoch", "wait", "best", "best_epoch", "lr_scale", "stopped"):
            assert getattr(clone, name) == getattr(self.scheduler, name), name
        if clone.stopped:
            try:
                clone.step(value)
            except RuntimeError:
                pass
            else:
                raise AssertionError("a restored stopped scheduler accepted step()")
        self.clone = clone
        self.advance(value, data)

    @rule(data=st.data())
    def finish_early(self, data: st.DataObject) -> None:
        """Something else ends training: finish() closes the run on the best weights."""
        event("rule finish_early")
        if self.scheduler.stopped:
            self.begin(data.draw(CONFIGS, label="next configuration"))
            self.apply(data.draw(MONITORED_VALUES, label="first value"))
        was_stopped = self.scheduler.stopped
        length = len(self.scheduler.history)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decision = self.scheduler.finish("another callback stopped training")
        expected = self.reference.finish()
        # ending with no best state at all is said out loud
        no_best = not was_stopped and self.scheduler.best_epoch is None
        assert len(caught) == int(no_best), [str(w.message) for w in caught]
        assert decision.external_stop and decision.stop and self.scheduler.stopped
        assert decision.restore_best is expected.restore_best
        assert decision.epoch == self.scheduler.epoch and not decision.newly_unfrozen
        assert decision.lr_factor == 1.0 and not decision.improved
        assert len(self.scheduler.history) == length + (not was_stopped)
        # finishing twice changes nothing and restores nothing
        again = self.scheduler.finish("again")
        assert not again.restore_best and len(self.scheduler.history) == length + (not was_stopped)
        if self.clone is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert self.clone.finish("another callback stopped training") == decision
        state = self.scheduler.state_dict()
        restored = UnfreezeScheduler(**self.config)
        restored.load_state_dict(json.loads(json.dumps(state, allow_nan=False)))
        assert restored.state_dict() == state and restored.stopped

    @invariant()
    def unfrozen_count_is_monotone_and_bounded(self) -> None:
        s = self.scheduler
        assert self.previous_unfrozen <= s.num_unfrozen <= s.num_groups
        self.previous_unfrozen = s.num_unfrozen
        assert s.trainable_groups == tuple(range(s.num_groups - s.num_unfrozen, s.num_groups))

    @invariant()
    def lr_scale_counts_unfreezes(self) -> None:
        s = self.scheduler
        unfreezes = sum(1 for d in s.history if d.newly_unfrozen)
        assert unfreezes == self.reference.unfreezes
        assert s.lr_scale == (1 - s.decay) ** unfreezes
        # an adapter multiplies the rate by every lr_factor; that product drifts only by rounding
        applied = math.prod(d.lr_factor for d in s.history)
        assert math.isclose(applied, s.lr_scale, rel_tol=1e-12, abs_tol=1e-300)

    @invariant()
    def best_is_the_extreme_of_finite_values(self) -> None:
        s, seen = self.scheduler, self.reference.finite_values
        if not seen:
            assert s.best_epoch is None
            assert s.best == (math.inf if s.mode == "min" else -math.inf)
            return
        assert s.best == self.reference.best and s.best_epoch == self.reference.best_epoch
        assert s.history[s.best_epoch - 1].improved
        extreme = min(seen) if s.mode == "min" else max(seen)
        if s.min_delta == 0:
            assert s.best == extreme
        elif s.mode == "min":
            # with a margin the best may trail the extreme, but never by more than the margin
            assert all(v >= s.best - s.min_delta for v in seen)
        else:
            assert all(v <= s.best + s.min_delta for v in seen)


SchedulerMachine.TestCase.settings = settings(
    settings.default,
    # Hypothesis switches rules off per example (swarm testing), so each rule is live in a
    # bit over half of the examples; doubling keeps every rule above the profile's count.
    max_examples=2 * settings.default.max_examples,
    # max_epochs is at most 40, so 60 steps reach a stop in most runs and then start again
    stateful_step_count=60,
)
test_scheduler_against_reference = SchedulerMachine.TestCase

"""Hand-written traces of Algorithm 1, worked out on paper from the semantics of Algorithm 1.

Each row is the decision expected after one epoch:
``(value, improved, num_unfrozen, newly_unfrozen, lr_factor, restore_best, stop)``.
"""

from __future__ import annotations

import math

import pytest

from dynft_core import Decision, UnfreezeScheduler

NAN, INF = math.nan, math.inf
Row = tuple[float, bool, int, tuple[int, ...], float, bool, bool]


def replay(scheduler: UnfreezeScheduler, rows: list[Row]) -> list[Decision]:
    """Step through ``rows`` and compare each decision with the hand-written expectation."""
    decisions = []
    for epoch, (value, improved, m, newly, lr_factor, restore, stop) in enumerate(rows, 1):
        d = scheduler.step(value)
        got = (d.improved, d.num_unfrozen, d.newly_unfrozen, d.lr_factor, d.restore_best, d.stop)
        assert got == (improved, m, newly, lr_factor, restore, stop), f"epoch {epoch}"
        assert d.epoch == epoch
        L = scheduler.num_groups
        assert d.trainable_groups == tuple(range(L - m, L)), f"epoch {epoch}"
        decisions.append(d)
    assert scheduler.stopped is rows[-1][-1]
    return decisions


def test_paper_setting_ten_groups_patience_two_step_three() -> None:
    s = UnfreezeScheduler(10, patience=2, step=3, decay=0.1, max_epochs=20)
    rows: list[Row] = [
        (1.00, True, 0, (), 1.0, False, False),
        (0.90, True, 0, (), 1.0, False, False),
        (0.95, False, 0, (), 1.0, False, False),
        (0.92, False, 3, (7, 8, 9), 0.9, True, False),  # 2nd miss: m 0 -> 3
        (0.85, True, 3, (), 1.0, False, False),
        (0.85, False, 3, (), 1.0, False, False),  # a tie is no improvement
        (0.86, False, 6, (4, 5, 6), 0.9, True, False),
        (NAN, False, 6, (), 1.0, True, False),  # diverged: rolled back at once
        (0.80, True, 6, (), 1.0, False, False),
        (INF, False, 6, (), 1.0, True, False),
        (0.81, False, 9, (1, 2, 3), 0.9, True, False),
        (0.70, True, 9, (), 1.0, False, False),
        (0.75, False, 9, (), 1.0, False, False),
        (0.75, False, 10, (0,), 0.9, True, False),  # min(9 + 3, 10): only group 0 is left
        (0.65, True, 10, (), 1.0, False, False),
        (0.66, False, 10, (), 1.0, False, False),
        (0.60, True, 10, (), 1.0, False, False),
        (0.61, False, 10, (), 1.0, False, False),
        (0.62, False, 10, (), 1.0, True, True),  # plateau with all unfrozen, before the budget
    ]
    decisions = replay(s, rows)
    assert (s.best, s.best_epoch, s.epoch) == (0.60, 17, 19)
    assert s.lr_scale == 0.9**4
    assert [d.epoch for d in decisions if d.newly_unfrozen] == [4, 7, 11, 14]
    assert "unfroze groups 7-9" in decisions[3].reason
    assert "restored best of epoch 2" in decisions[3].reason
    assert "unfroze group 0 " in decisions[13].reason
    assert "plateau" in decisions[-1].reason and "best of epoch 17" in decisions[-1].reason
    with pytest.raises(RuntimeError, match="stopped"):
        s.step(0.5)


def test_epoch_budget_stops_with_the_best_restored() -> None:
    s = UnfreezeScheduler(10, patience=2, step=3, decay=0.1, max_epochs=5)
    rows: list[Row] = [
        (3.0, True, 0, (), 1.0, False, False),
        (2.0, True, 0, (), 1.0, False, False),
        (2.5, False, 0, (), 1.0, False, False),
        (1.0, True, 0, (), 1.0, False, False),
        (1.5, False, 0, (), 1.0, True, True),  # wait 1 < patience, but epoch 5 = budget
    ]
    decisions = replay(s, rows)
    assert "epoch budget of 5 reached" in decisions[-1].reason
    assert (s.best, s.best_epoch, s.num_unfrozen, s.lr_scale) == (1.0, 4, 0, 1.0)


def test_unfreeze_at_the_last_epoch_also_stops() -> None:
    s = UnfreezeScheduler(4, patience=2, step=3, decay=0.1, max_epochs=6)
    rows: list[Row] = [
        (5.0, True, 0, (), 1.0, False, False),
        (5.0, False, 0, (), 1.0, False, False),
        (6.0, False, 3, (1, 2, 3), 0.9, True, False),
        (4.0, True, 3, (), 1.0, False, False),
        (4.5, False, 3, (), 1.0, False, False),
        (4.2, False, 4, (0,), 0.9, True, True),  # unfreeze and budget in the same step
    ]
    decisions = replay(s, rows)
    assert s.lr_scale == 0.9**2
    assert "unfroze group 0" in decisions[-1].reason
    assert "epoch budget of 6 reached" in decisions[-1].reason


def test_mode_max_with_min_delta() -> None:
    s = UnfreezeScheduler(
        3, patience=1, step=2, decay=0.5, max_epochs=10, min_delta=0.05, mode="max"
    )
    rows: list[Row] = [
        (0.50, True, 0, (), 1.0, False, False),
        (0.54, False, 2, (1, 2), 0.5, True, False),  # higher, but not by more than 0.05
        (0.56, True, 2, (), 1.0, False, False),
        (0.60, False, 3, (0,), 0.5, True, False),  # 0.60 is not above 0.56 + 0.05
        (0.70, True, 3, (), 1.0, False, False),
        (NAN, False, 3, (), 1.0, True, True),
    ]
    replay(s, rows)
    assert (s.best, s.best_epoch, s.lr_scale) == (0.70, 5, 0.25)


def test_min_delta_boundary_is_strict() -> None:
    # dyadic numbers, so best - min_delta is exact: 1.0 - 0.25 == 0.75
    s = UnfreezeScheduler(2, patience=3, step=1, max_epochs=10, min_delta=0.25)
    rows: list[Row] = [
        (1.0, True, 0, (), 1.0, False, False),
        (0.75, False, 0, (), 1.0, False, False),  # exactly best - min_delta: not below it
        (0.5, True, 0, (), 1.0, False, False),
    ]
    replay(s, rows)
    assert (s.best, s.wait) == (0.5, 0)


def test_nan_before_any_best_unfreezes_without_a_restore() -> None:
    s = UnfreezeScheduler(2, patience=2, step=1, decay=0.1, max_epochs=5)
    rows: list[Row] = [
        (NAN, False, 0, (), 1.0, False, False),
        (NAN, False, 1, (1,), 0.9, False, False),  # nothing to restore yet
        (1.0, True, 1, (), 1.0, False, False),
        (-INF, False, 1, (), 1.0, True, False),  # not finite: a divergence, rolled back
        (2.0, False, 2, (0,), 0.9, True, True),
    ]
    decisions = replay(s, rows)
    assert "no best to restore" in decisions[1].reason
    assert "diverged with no best to restore" in decisions[0].reason
    assert "diverged: restored best of epoch 3" in decisions[3].reason
    assert decisions[0].diverged and not decisions[2].diverged
    assert "(0/2)" not in decisions[1].reason
    assert (s.best, s.best_epoch) == (1.0, 3)


def test_only_non_finite_values_stop_at_the_budget_with_nothing_to_restore() -> None:
    s = UnfreezeScheduler(1, patience=3, max_epochs=2)
    rows: list[Row] = [
        (NAN, False, 0, (), 1.0, False, False),
        (INF, False, 0, (), 1.0, False, True),
    ]
    replay(s, rows)
    assert s.best == math.inf and s.best_epoch is None


def test_num_groups_smaller_than_step() -> None:
    s = UnfreezeScheduler(2, patience=1, step=5, decay=0.2, max_epochs=100)
    rows: list[Row] = [
        (1.0, True, 0, (), 1.0, False, False),
        (1.0, False, 2, (0, 1), 0.8, True, False),  # min(0 + 5, 2): everything at once
        (0.5, True, 2, (), 1.0, False, False),
        (0.6, False, 2, (), 1.0, True, True),
    ]
    replay(s, rows)
    assert s.lr_scale == 0.8


def test_single_group_single_step() -> None:
    s = UnfreezeScheduler(1, patience=1, step=1, decay=0.0, max_epochs=100)
    rows: list[Row] = [
        (3.0, True, 0, (), 1.0, False, False),
        (3.0, False, 1, (0,), 1.0, True, False),  # decay 0: the rate is kept
        (3.0, False, 1, (), 1.0, True, True),
    ]
    replay(s, rows)


def test_best_is_never_reset_between_stages() -> None:
    s = UnfreezeScheduler(6, patience=2, step=2, max_epochs=100)
    rows: list[Row] = [
        (1.0, True, 0, (), 1.0, False, False),
        (2.0, False, 0, (), 1.0, False, False),
        (2.0, False, 2, (4, 5), 0.9, True, False),
        # a reset best would make 1.5 a new best; it is still worse than 1.0
        (1.5, False, 2, (), 1.0, False, False),
        (1.2, False, 4, (2, 3), 0.9, True, False),
        (0.9, True, 4, (), 1.0, False, False),
    ]
    decisions = replay(s, rows)
    assert (s.best, s.best_epoch) == (0.9, 6)
    assert "restored best of epoch 1" in decisions[4].reason


def test_steady_improvement_never_unfreezes() -> None:
    s = UnfreezeScheduler(5, patience=1, max_epochs=8)
    rows: list[Row] = [(10.0 - e, True, 0, (), 1.0, e == 8, e == 8) for e in range(1, 9)]
    replay(s, rows)
    assert s.num_unfrozen == 0 and s.trainable_groups == ()


def test_decision_fields_and_history() -> None:
    s = UnfreezeScheduler(3, patience=1, step=1, max_epochs=4)
    first = s.step(2.0)
    second = s.step(2.0)
    assert s.history == [first, second]
    assert not first.unfroze and second.unfroze
    assert second.value == 2.0 and isinstance(second.value, float)
    with pytest.raises(AttributeError):
        second.stop = True  # type: ignore[misc]
    assert Decision.from_dict(second.to_dict()) == second


def test_no_budget_runs_until_the_final_plateau() -> None:
    s = UnfreezeScheduler(2, patience=1, step=2, max_epochs=None)
    rows: list[Row] = [(1.0 / e, True, 0, (), 1.0, False, False) for e in range(1, 300)]
    rows += [
        (1.0, False, 2, (0, 1), 0.9, True, False),
        (1.0, False, 2, (), 1.0, True, True),
    ]
    decisions = replay(s, rows)
    assert s.epoch == 301 and "plateau" in decisions[-1].reason


def test_finish_restores_the_best_when_something_else_ends_training() -> None:
    s = UnfreezeScheduler(4, patience=3, step=1, max_epochs=20)
    for value in (1.0, 0.5, 0.8, 0.9):
        s.step(value)
    final = s.finish("EarlyStopping ended fit")
    assert (final.stop, final.restore_best, final.external_stop) == (True, True, True)
    assert final.epoch == 4 and math.isnan(final.value) and s.stopped
    assert final.reason == (
        "EarlyStopping ended fit after 4 of max_epochs=20 epochs: restored best of epoch 2"
    )
    assert s.history[-1] is final and len(s.history) == 5
    again = s.finish("on_train_end")
    assert not again.restore_best and len(s.history) == 5
    with pytest.raises(RuntimeError, match="stopped"):
        s.step(0.1)


def test_finish_after_the_scheduler_stopped_itself_does_nothing() -> None:
    s = UnfreezeScheduler(1, patience=1, step=1, max_epochs=2)
    s.step(1.0)
    assert s.step(2.0).stop
    final = s.finish("fit ended")
    assert not final.restore_best and "had already stopped at epoch 2" in final.reason
    assert len(s.history) == 2


def test_finish_before_any_finite_value_warns() -> None:
    s = UnfreezeScheduler(2, patience=3)
    s.step(NAN)
    with pytest.warns(RuntimeWarning, match="no best to restore"):
        final = s.finish("the loop ended")
    assert not final.restore_best and final.stop


def test_restore_best_weights_false_keeps_the_last_weights_at_the_end() -> None:
    s = UnfreezeScheduler(2, patience=1, step=2, max_epochs=4, restore_best_weights=False)
    rows: list[Row] = [
        (1.0, True, 0, (), 1.0, False, False),
        (2.0, False, 2, (0, 1), 0.9, True, False),  # the rollback of Algorithm 1 still happens
        (0.5, True, 2, (), 1.0, False, False),
        (0.7, False, 2, (), 1.0, False, True),  # stop, no restore
    ]
    decisions = replay(s, rows)
    assert "last weights" in decisions[-1].reason
    other = UnfreezeScheduler(2, patience=5, max_epochs=4, restore_best_weights=False)
    other.step(1.0)
    other.step(2.0)
    assert not other.finish("budget").restore_best


def test_finish_with_a_reason_that_is_not_text_is_refused_and_changes_nothing() -> None:
    scheduler = UnfreezeScheduler(num_groups=2, patience=1)
    scheduler.step(1.0)
    before = scheduler.state_dict()
    with pytest.raises(TypeError, match=r"why must be a string .* got 3"):
        scheduler.finish(3)  # type: ignore[arg-type]
    assert scheduler.state_dict() == before and not scheduler.stopped

"""The strategies' framework-free plans: depths, the adapter settings, fixed-depth stopping."""

from __future__ import annotations

import pytest

from benchmarks.study.config import STRATEGIES, StudyConfig
from benchmarks.study.runners.strategies import (
    FIXED_DEPTH,
    RATIO_STRATEGIES,
    STAGED,
    FixedDepthStop,
    fixed_depth,
    staged_plan,
    unfrozen_lr_ratio,
)
from dynft_core import UnfreezeScheduler


def test_every_strategy_is_fixed_depth_or_staged():
    assert sorted(FIXED_DEPTH + STAGED) == sorted(STRATEGIES)


def test_fixed_depths_count_from_the_top():
    assert [fixed_depth(s, top_n=10, num_layers=49) for s in FIXED_DEPTH] == [0, 49, 10]
    with pytest.raises(ValueError, match="'dynamic' is not a fixed-depth strategy"):
        fixed_depth("dynamic", 10, 49)


def test_two_stage_is_one_group_unfrozen_once_at_a_tenth_of_the_rate():
    cfg = StudyConfig(patience=3, step=3, decay=0.1, epochs=30)
    plan = staged_plan("two_stage", cfg)
    assert plan.groups([["a"], ["b", "bn"], ["c"]]) == [["a", "b", "bn", "c"]]
    options = dict(plan.options)
    assert options.pop("unfrozen_lr_ratio") == 1.0  # the study's default ratio
    scheduler = UnfreezeScheduler(1, **options)
    decisions = [scheduler.step(v) for v in (1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85)]
    unfreeze = decisions[4]
    assert unfreeze.newly_unfrozen == (0,) and unfreeze.restore_best
    assert unfreeze.lr_factor == pytest.approx(0.1)
    assert decisions[-1].stop and decisions[-1].restore_best and scheduler.best_epoch == 6


def test_dynamic_takes_the_study_settings_and_the_layers_as_groups():
    cfg = StudyConfig(patience=2, step=4, decay=0.2, epochs=12, unfrozen_lr_ratio=0.1)
    plan = staged_plan("dynamic", cfg)
    # Algorithm 1 as the paper defines it: one rate for everything, whatever the study's ratio
    options = {"patience": 2, "step": 4, "decay": 0.2, "max_epochs": 12}
    assert plan.options == {**options, "unfrozen_lr_ratio": 1.0}
    assert plan.groups([["a"], ["b"]]) == [["a"], ["b"]]
    tuned = staged_plan("dynamic_tuned", cfg)
    assert tuned.options == {**options, "unfrozen_lr_ratio": 0.1}
    assert tuned.groups([["a"], ["b"]]) == [["a"], ["b"]]
    with pytest.raises(ValueError, match="'full' is not a staged strategy"):
        staged_plan("full", cfg)


def test_the_ratio_reaches_two_stage_and_dynamic_tuned_only():
    cfg = StudyConfig(unfrozen_lr_ratio=0.25)
    assert RATIO_STRATEGIES == ("two_stage", "dynamic_tuned")
    assert staged_plan("two_stage", cfg).options["unfrozen_lr_ratio"] == 0.25
    ratios = {strategy: unfrozen_lr_ratio(strategy, cfg) for strategy in STRATEGIES}
    assert ratios == {
        "linear_probe": None,
        "full": None,
        "traditional": None,
        "two_stage": 0.25,
        "dynamic": 1.0,
        "dynamic_tuned": 0.25,
    }


def test_fixed_depth_stop_after_patience_misses_and_at_the_budget():
    stopper = FixedDepthStop(patience=2, max_epochs=10)
    assert [stopper.step(v) for v in (1.0, 0.8, 0.9, 0.85)] == [
        (True, False),
        (True, False),
        (False, False),
        (False, True),
    ]
    assert stopper.best_epoch == 2
    short = FixedDepthStop(patience=5, max_epochs=2)
    assert [short.step(v) for v in (1.0, 0.9)] == [(True, False), (True, True)]


def test_fixed_depth_stop_counts_a_non_finite_loss_as_a_miss():
    stopper = FixedDepthStop(patience=1, max_epochs=10)
    assert stopper.step(1.0) == (True, False)
    assert stopper.step(float("nan")) == (False, True)
    assert stopper.best_epoch == 1

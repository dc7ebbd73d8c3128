"""The sweep's grid, its candidates per strategy and the choice on the validation loss."""

from __future__ import annotations

import math

import pytest

from benchmarks.study.config import STRATEGIES, StudyConfigError
from benchmarks.study.sweep import SWEEPABLE, candidates, choose, parse_sweep


def test_parse_sweep_reads_each_setting_once():
    assert parse_sweep(["lr=1e-4, 3e-4,1e-3"]) == {"lr": (1e-4, 3e-4, 1e-3)}
    assert parse_sweep([]) == {}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["momentum=0.9"], "'momentum' cannot be swept; sweepable: ['lr', 'unfrozen_lr_ratio']"),
        (["lr=1e-3", "lr=1e-4"], "--sweep lr is given twice"),
        (["lr=1e-3,fast"], "'fast' is not a number > 0"),
        (["lr=0"], "'0' is not a number > 0"),
        (["lr=inf"], "'inf' is not a number > 0"),
        (["lr=1e-3,0.001"], "repeats a value"),
    ],
)
def test_parse_sweep_names_the_bad_value(items, message):
    with pytest.raises(StudyConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_sweep(items)


def test_candidates_cover_the_grid_of_the_settings_a_strategy_has(monkeypatch):
    grid = {"lr": (1e-4, 1e-3)}
    assert candidates(grid, "full") == [{"lr": 1e-4}, {"lr": 1e-3}]
    assert candidates({}, "full") == [{}]
    # a setting only the staged strategies have multiplies their candidates alone
    monkeypatch.setitem(SWEEPABLE, "ratio", ("dynamic",))
    grid = {"lr": (1e-4, 1e-3), "ratio": (0.1, 1.0)}
    assert len(candidates(grid, "dynamic")) == 4 and len(candidates(grid, "full")) == 2
    assert {"lr": 1e-3, "ratio": 0.1} in candidates(grid, "dynamic")


def test_the_unfrozen_lr_ratio_is_swept_for_the_strategies_that_take_it():
    grid = parse_sweep(["lr=1e-4,1e-3", "unfrozen_lr_ratio=0.1,1"])
    sizes = {strategy: len(candidates(grid, strategy)) for strategy in STRATEGIES}
    assert sizes == {
        "linear_probe": 2,
        "full": 2,
        "traditional": 2,
        "two_stage": 4,
        "dynamic": 2,  # Algorithm 1 keeps its ratio of 1
        "dynamic_tuned": 4,
    }
    assert {"lr": 1e-4, "unfrozen_lr_ratio": 0.1} in candidates(grid, "dynamic_tuned")


def test_choose_takes_the_lowest_validation_loss_and_never_a_diverged_one():
    trials = [
        {"setting": {"lr": 1e-2}, "val_loss": math.nan},
        {"setting": {"lr": 1e-3}, "val_loss": 0.4},
        {"setting": {"lr": 1e-4}, "val_loss": 0.4},
        {"setting": {"lr": 3e-4}, "val_loss": 0.5},
    ]
    assert choose(trials) == {"lr": 1e-3}  # the first of equals
    with pytest.raises(StudyConfigError, match="every candidate of the sweep diverged"):
        choose(trials[:1])

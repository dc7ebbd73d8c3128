"""Trivial predictors against hand computation and simulation; the sanity flags of a run."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.study.results.baselines import (
    degenerate,
    describe,
    sanity_flags,
    trivial_baselines,
)
from benchmarks.study.results.metrics import classification_metrics

NAMES = ["a", "b", "c"]
TRAIN = np.array([0] * 6 + [1] * 3 + [2])  # priors 0.6 / 0.3 / 0.1
TEST = np.array([0, 0, 0, 1, 2])  # shares 0.6 / 0.2 / 0.2


def test_majority_and_prior_by_hand():
    baselines = trivial_baselines(TRAIN, TEST, NAMES)
    assert baselines["chance"] == pytest.approx(1 / 3)
    majority = baselines["majority"]
    assert majority["answers"] == "always 'a'"
    assert majority["accuracy"] == pytest.approx(0.6)
    assert majority["balanced_accuracy"] == pytest.approx(1 / 3)
    assert majority["macro_f1"] == pytest.approx(0.75 / 3)  # P 0.6, R 1 for 'a'; 0 elsewhere
    assert majority["recall"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    prior = baselines["prior"]
    assert prior["accuracy"] == pytest.approx(0.6 * 0.6 + 0.2 * 0.3 + 0.2 * 0.1)
    assert prior["balanced_accuracy"] == pytest.approx(1 / 3)
    f1 = [2 * 0.36 / 1.2, 2 * 0.06 / 0.5, 2 * 0.02 / 0.3]
    assert prior["macro_f1"] == pytest.approx(np.mean(f1))
    assert prior["recall"] == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1})


def test_prior_sampling_matches_simulated_random_predictors():
    rng = np.random.default_rng(0)
    train = rng.choice(4, 400, p=[0.7, 0.2, 0.07, 0.03])
    test = rng.choice(4, 300, p=[0.6, 0.25, 0.1, 0.05])
    names = ["w", "x", "y", "z"]
    expected = trivial_baselines(train, test, names)["prior"]
    prior = np.bincount(train, minlength=4) / len(train)
    simulated = [
        classification_metrics(test, rng.choice(4, len(test), p=prior), names) for _ in range(150)
    ]
    for metric, tolerance in (
        ("accuracy", 0.008),
        ("balanced_accuracy", 0.012),
        ("macro_f1", 0.015),
    ):
        assert np.mean([s[metric] for s in simulated]) == pytest.approx(
            expected[metric], abs=tolerance
        )


def test_a_class_absent_from_training_is_never_answered_but_still_scored():
    baselines = trivial_baselines(np.array([0, 0, 1]), np.array([0, 1, 2]), NAMES)
    assert baselines["prior"]["recall"]["c"] == 0.0
    assert baselines["prior"]["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)


def _run(accuracy, balanced_accuracy, macro_f1):
    return {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1}


def test_sanity_flags_name_each_metric_at_or_below_a_baseline():
    baselines = trivial_baselines(TRAIN, TEST, NAMES)
    assert sanity_flags(_run(0.8, 0.7, 0.6), baselines) == []
    flags = sanity_flags(_run(0.6, 0.4, 0.3), baselines)
    assert [(f["metric"], f["against"]) for f in flags] == [
        ("accuracy", "majority"),  # equal to it: not above
        ("macro_f1", "prior"),
    ]
    assert not degenerate(flags)
    assert describe(flags[0]) == (
        "accuracy 60.0 % is not above the majority class predictor (60.0 %)"
    )


def test_a_collapsed_run_is_flagged_at_or_below_chance():
    baselines = trivial_baselines(TRAIN, TEST, NAMES)
    flags = sanity_flags(_run(0.2, 1 / 3, 0.1), baselines)
    assert degenerate(flags)
    assert [describe(f) for f in flags] == [
        "accuracy 20.0 % is at or below chance (33.3 %)",
        "balanced accuracy 33.3 % is at or below chance (33.3 %)",
        "macro f1 10.0 % is not above the prior sampling predictor (32.4 %)",
    ]

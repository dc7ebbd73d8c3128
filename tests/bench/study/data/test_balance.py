"""Imbalance handling: Eq. 14, the tempered sampler, one correction per mode, the minority rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.study.data.balance import (
    BALANCE_MODES,
    balance_plan,
    class_weights,
    minority_mask,
    sampling_shares,
    stratified_epoch,
    validation_loss,
    weights_for_shares,
)

TABLE_1 = np.repeat(np.arange(7), [10398, 2456, 1070, 718, 404, 265, 105])
class_counts = st.lists(st.integers(1, 400), min_size=2, max_size=7)


def test_eq14_hand_computed():
    # N = 4, C = 2: w0 = 4 / (2 * 3), w1 = 4 / (2 * 1)
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1]), 2), [2 / 3, 2.0])


def test_eq14_on_table_1():
    weights = class_weights(TABLE_1, 7)
    assert weights[0] == pytest.approx(15416 / (7 * 10398))  # 0.2118
    assert weights[6] == pytest.approx(15416 / (7 * 105))  # 20.97
    counts = np.bincount(TABLE_1)
    np.testing.assert_allclose(counts * weights, 15416 / 7)  # every class carries N / C


def test_absent_class_gets_weight_zero():
    np.testing.assert_allclose(class_weights(np.array([0, 0, 1, 1]), 3), [2 / 3, 2 / 3, 0.0])


def test_eq14_on_the_natural_shares_is_eq14():
    shares = np.bincount(TABLE_1) / len(TABLE_1)
    np.testing.assert_allclose(weights_for_shares(shares, 7), class_weights(TABLE_1, 7))


def test_tempered_shares_follow_the_square_root_of_the_counts():
    shares = sampling_shares(TABLE_1, 7, 0.5)
    root = np.sqrt(np.bincount(TABLE_1))
    np.testing.assert_allclose(shares, root / root.sum())
    # the rarest class is drawn 5.8x more often than naturally, not 21x (balanced sampling)
    assert shares[6] / (105 / 15416) == pytest.approx(5.84, abs=0.01)
    weights = balance_plan("tempered", TABLE_1, 7).weights
    assert weights[6] / weights[0] == pytest.approx(np.sqrt(10398 / 105), rel=1e-5)


@given(class_counts)
def test_every_single_correction_mode_gives_each_class_one_share_of_the_objective(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    for mode in ("tempered", "sampler", "weights"):
        plan = balance_plan(mode, labels, len(counts))
        np.testing.assert_allclose(plan.objective_shares, 1 / len(counts), rtol=1e-5)


@given(class_counts)
def test_both_compounds_the_corrections_and_none_applies_none(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    inverse = 1 / np.asarray(counts, dtype=float)
    both = balance_plan("both", labels, len(counts)).objective_shares
    np.testing.assert_allclose(both, inverse / inverse.sum(), rtol=1e-5)
    none = balance_plan("none", labels, len(counts)).objective_shares
    np.testing.assert_allclose(none, np.asarray(counts) / sum(counts), rtol=1e-6)


@given(class_counts)
def test_sqrt_applies_half_a_correction_with_the_tempered_batches(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    plan = balance_plan("sqrt", labels, len(counts))
    root = np.sqrt(np.asarray(counts, dtype=float))
    np.testing.assert_allclose(plan.objective_shares, root / root.sum(), rtol=1e-5)
    np.testing.assert_array_equal(plan.weights, 1.0)
    np.testing.assert_allclose(plan.shares, balance_plan("tempered", labels, len(counts)).shares)


@given(class_counts, st.integers(0, 2**32 - 1))
def test_stratified_epoch_has_the_exact_composition_evenly_spaced(counts, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    num_classes = len(counts)
    shares = sampling_shares(labels, num_classes, 0.5)
    epoch = stratified_epoch(labels, shares, len(labels), np.random.default_rng(seed))
    assert len(epoch) == len(labels)
    drawn = np.bincount(labels[epoch], minlength=num_classes)
    assert np.all(np.abs(drawn - len(labels) * shares) < 1)  # largest remainder
    for label in np.flatnonzero(drawn):
        where = np.flatnonzero(labels[epoch] == label)
        gaps = np.diff(np.concatenate([[-1], where]))
        assert gaps.max() <= len(epoch) / drawn[label] + num_classes - 1
        per_image = np.bincount(epoch[where], minlength=len(labels))[labels == label]
        assert per_image.max() - per_image.min() <= 1  # images of a class recur evenly
    batch = 8
    batches = [labels[epoch[i : i + batch]] for i in range(0, len(epoch) - batch + 1, batch)]
    for label in np.flatnonzero(drawn * (batch - num_classes + 1) >= len(epoch)):
        assert all(label in b for b in batches), f"class {label} missing from a batch"


def test_stratified_epoch_is_reproducible_and_changes_between_epochs():
    labels = np.repeat([0, 1, 2], [90, 9, 1])
    shares = sampling_shares(labels, 3, 0.5)
    first = stratified_epoch(labels, shares, 100, np.random.default_rng(3))
    np.testing.assert_array_equal(
        first, stratified_epoch(labels, shares, 100, np.random.default_rng(3))
    )
    rng = np.random.default_rng(3)
    assert not np.array_equal(
        stratified_epoch(labels, shares, 100, rng), stratified_epoch(labels, shares, 100, rng)
    )


def test_sampler_skips_classes_absent_from_training():
    labels = np.array([0, 0, 0, 2])
    shares = sampling_shares(labels, 3, 0.0)
    np.testing.assert_allclose(shares, [0.5, 0.0, 0.5])
    drawn = labels[stratified_epoch(labels, shares, 10, np.random.default_rng(2))]
    assert np.bincount(drawn, minlength=3).tolist() == [5, 0, 5]


def test_minority_rule_on_table_1():
    # N / C = 2202: COVID-19 (2456) and pneumonia are majority, the rest minority.
    assert minority_mask(TABLE_1, 7).tolist() == [False, False, True, True, True, True, True]
    assert not minority_mask(np.array([0, 1, 2, 0, 1, 2]), 3).any()


def test_bad_values_are_rejected_with_the_value():
    with pytest.raises(ValueError, match=r"label 3 is out of range \[0, 2\]"):
        class_weights(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="1-D integer array"):
        minority_mask(np.array([0.5, 1.0]), 2)
    with pytest.raises(ValueError, match="num_samples must be >= 0"):
        stratified_epoch(np.array([0, 1]), np.array([0.5, 0.5]), -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"tempering must lie in \[0, 1\], got 2"):
        sampling_shares(np.array([0, 1]), 2, 2)
    with pytest.raises(ValueError, match=r"balance must be one of .*'tempered'.*got 'square'"):
        balance_plan("square", np.array([0, 1]), 2)
    assert BALANCE_MODES[0] == "tempered"


def test_balanced_validation_loss_is_the_mean_of_the_class_means():
    labels = np.array([0, 0, 0, 1, 2])
    losses = np.array([0.1, 0.2, 0.3, 2.0, 1.0])
    # class means 0.2, 2.0 and 1.0; the plain mean is dominated by class 0
    assert validation_loss(losses, labels, 4, "balanced") == pytest.approx((0.2 + 2.0 + 1.0) / 3)
    assert validation_loss(losses, labels, 4, "plain") == pytest.approx(0.72)


@given(class_counts, st.integers(0, 2**31 - 1))
def test_balanced_validation_loss_ranks_the_majority_leaning_model_worse(counts, seed):
    """A model right on the majority class only beats one right on every class in the plain
    mean, never in the balanced one: the collapse the plain monitor rewarded."""
    labels = np.repeat(np.arange(len(counts)), counts)
    majority = int(np.argmax(counts))
    rng = np.random.default_rng(seed)
    fair = rng.uniform(0.4, 0.6, len(labels))
    leaning = np.where(labels == majority, 0.05, 3.0)
    assert validation_loss(fair, labels, len(counts), "balanced") < validation_loss(
        leaning, labels, len(counts), "balanced"
    )


def test_validation_loss_rejects_a_bad_mode_and_mismatched_lengths():
    with pytest.raises(ValueError, match="'mean'"):
        validation_loss(np.zeros(2), np.array([0, 1]), 2, "mean")
    with pytest.raises(ValueError, match="3 losses for 2 labels"):
        validation_loss(np.zeros(3), np.array([0, 1]), 2, "plain")

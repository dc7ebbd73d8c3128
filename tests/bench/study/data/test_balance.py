"""Eq. 14 class weights, class-balanced sampling and the minority rule."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.study.data.balance import balanced_indices, class_weights, minority_mask

TABLE_1 = np.repeat(np.arange(7), [10398, 2456, 1070, 718, 404, 265, 105])


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


def test_balanced_sampler_equalises_classes_over_many_draws():
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    drawn = labels[balanced_indices(labels, 30000, np.random.default_rng(0))]
    np.testing.assert_allclose(np.bincount(drawn) / 30000, 1 / 3, atol=0.015)


def test_balanced_sampler_is_uniform_within_a_class_and_reproducible():
    labels = np.repeat([0, 1], [4, 96])
    indices = balanced_indices(labels, 40000, np.random.default_rng(1))
    minority_draws = np.bincount(indices[labels[indices] == 0], minlength=4)
    np.testing.assert_allclose(minority_draws / minority_draws.sum(), 0.25, atol=0.02)
    again = balanced_indices(labels, 40000, np.random.default_rng(1))
    np.testing.assert_array_equal(indices, again)


def test_balanced_sampler_skips_classes_absent_from_training():
    labels = np.array([0, 0, 0, 2])
    drawn = labels[balanced_indices(labels, 10000, np.random.default_rng(2))]
    assert set(drawn.tolist()) == {0, 2}
    assert np.mean(drawn == 2) == pytest.approx(0.5, abs=0.02)


def test_minority_rule_on_table_1():
    # N / C = 2202: COVID-19 (2456) and pneumonia are majority, the rest minority.
    assert minority_mask(TABLE_1, 7).tolist() == [False, False, True, True, True, True, True]
    assert not minority_mask(np.array([0, 1, 2, 0, 1, 2]), 3).any()


def test_bad_labels_are_rejected_with_the_value():
    with pytest.raises(ValueError, match=r"label 3 is out of range \[0, 2\]"):
        class_weights(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="1-D integer array"):
        minority_mask(np.array([0.5, 1.0]), 2)
    with pytest.raises(ValueError, match="num_samples must be >= 0"):
        balanced_indices(np.array([0, 1]), -1, np.random.default_rng(0))

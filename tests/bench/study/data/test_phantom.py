"""The synthetic phantom: Table 1 proportions, patients, determinism, speed, learnability."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier

from benchmarks.study.data.phantom import (
    CLASS_NAMES,
    PAPER_CLASS_COUNTS,
    class_counts,
    make_phantom,
)
from benchmarks.study.data.splits import split_dataset
from benchmarks.study.results.metrics import classification_metrics

TABLE_1 = [10398, 2456, 1070, 718, 404, 265, 105]


def test_class_counts_reproduce_table_1_at_full_size():
    assert class_counts(15416).tolist() == TABLE_1
    assert list(PAPER_CLASS_COUNTS.values()) == TABLE_1


def test_class_counts_follow_proportions_with_a_floor():
    counts = class_counts(700)
    assert counts.sum() == 700
    expected = 700 * np.array(TABLE_1) / 15416
    assert counts[6] == 6  # 4.8 expected: raised to the floor of 6
    np.testing.assert_allclose(counts[:6], expected[:6], atol=2.0)
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)


def test_phantom_is_seeded_and_labelled_synthetic():
    first, again, other = make_phantom(84, 32, 1), make_phantom(84, 32, 1), make_phantom(84, 32, 2)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.patient_ids, again.patient_ids)
    assert not np.array_equal(first.images, other.images)
    assert first.synthetic and first.class_names == CLASS_NAMES


def test_patients_have_several_images_of_one_class():
    ds = make_phantom(700, 32, 0)
    patients, per_patient = np.unique(ds.patient_ids, return_counts=True)
    assert per_patient.max() <= 4 and per_patient.mean() >= 2.0
    for patient in patients:
        assert len(set(ds.labels[ds.patient_ids == patient].tolist())) == 1
    assert np.bincount(ds.labels).tolist() == class_counts(700).tolist()


def test_seven_hundred_images_at_96_pixels_in_under_five_seconds():
    start = time.perf_counter()
    make_phantom(700, 96, 0)
    assert time.perf_counter() - start < 5.0


def test_class_patterns_are_learnable_by_a_linear_model():
    ds = make_phantom(700, 48, 0)
    split = split_dataset(ds, seed=0)
    features = ds.images[:, ::2, ::2].reshape(len(ds.images), -1) / 255.0
    model = RidgeClassifier(class_weight="balanced")
    model.fit(features[split.train], ds.labels[split.train])
    test = np.concatenate([split.val, split.test])
    scores = classification_metrics(ds.labels[test], model.predict(features[test]), CLASS_NAMES)
    majority_rate = np.bincount(ds.labels[test]).max() / len(test)
    assert scores["accuracy"] > majority_rate + 0.1
    assert scores["macro_f1"] > 0.6  # chance level for seven classes is about 0.14


def test_effusion_brightens_the_lung_bases_and_tb_the_upper_zones():
    ds = make_phantom(700, 64, 0)
    mean = {
        name: ds.images[ds.labels == index].mean(axis=0) for index, name in enumerate(CLASS_NAMES)
    }
    lower, upper = slice(36, 46), slice(12, 24)
    lungs = np.r_[8:26, 38:56]
    base_gain = (
        mean["Pleural Effusion"][lower, lungs].mean() - mean["COVID-19"][lower, lungs].mean()
    )
    apex_gain = mean["Tuberculosis"][upper, lungs].mean() - mean["COVID-19"][upper, lungs].mean()
    assert base_gain > 5.0
    assert apex_gain > 0.5


@pytest.mark.parametrize(
    ("images", "size", "message"), [(41, 64, "at least 42 images"), (100, 16, "at least 32 pixels")]
)
def test_phantom_rejects_too_small_requests(images, size, message):
    with pytest.raises(ValueError, match=message):
        make_phantom(images, size, 0)

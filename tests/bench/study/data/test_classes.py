"""Leaving classes out (--drop-classes): images, labels, patients and an official split follow."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.study.data.classes import without_classes
from benchmarks.study.data.dataset import DataError, Dataset


def _dataset(official: dict[str, np.ndarray] | None = None) -> Dataset:
    labels = np.array([0, 3, 1, 2, 3, 0, 1, 2])
    return Dataset(
        name="toy",
        images=np.arange(8, dtype=np.uint8).reshape(8, 1, 1).repeat(2, 1).repeat(2, 2),
        labels=labels,
        class_names=["covid", "pneumonia", "normal", "ards"],
        patient_ids=np.array(["a", "b", "c", "d", "e", "a", "f", "g"]),
        official_split=official,
        synthetic=False,
    )


def test_dropping_a_class_removes_its_images_and_renumbers_the_rest_in_order():
    ds, notes = without_classes(_dataset(), ("ards",))
    assert ds.class_names == ["covid", "pneumonia", "normal"]
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.images[:, 0, 0].tolist() == [0, 2, 3, 5, 6, 7]  # each image keeps its label
    assert ds.patient_ids.tolist() == ["a", "c", "d", "a", "f", "g"]
    assert notes == [
        "class 'ards' left out (--drop-classes): 2 images of 2 patient(s) removed before the split"
    ]


def test_a_middle_class_can_go_and_an_official_split_is_reindexed():
    official = {"train": np.array([0, 1, 2, 3]), "val": np.array([4, 5]), "test": np.array([6, 7])}
    ds, _ = without_classes(_dataset(official), ("pneumonia",))
    assert ds.class_names == ["covid", "normal", "ards"]
    assert ds.labels.tolist() == [0, 2, 1, 2, 0, 1]
    kept = {part: ds.images[indices, 0, 0].tolist() for part, indices in ds.official_split.items()}
    assert kept == {"train": [0, 1, 3], "val": [4, 5], "test": [7]}


def test_no_names_is_the_same_data_set():
    original = _dataset()
    assert without_classes(original, ()) == (original, [])


def test_unknown_names_and_too_few_remaining_classes_are_refused():
    with pytest.raises(DataError, match=r"\['ARDS'\] not among the classes of toy"):
        without_classes(_dataset(), ("ARDS",))
    with pytest.raises(DataError, match=r"leaves 1 class\(es\)"):
        without_classes(_dataset(), ("pneumonia", "normal", "ards"))

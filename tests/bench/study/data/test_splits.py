"""Patient-level splitting: no leakage, 80/10/10, stratification, official and tiny classes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_file

from benchmarks.study.data.dataset import DataError, Dataset
from benchmarks.study.data.phantom import make_phantom
from benchmarks.study.data.sources import load_dataset
from benchmarks.study.data.splits import split_dataset


def _dataset(labels, patients, official=None) -> Dataset:
    labels = np.asarray(labels)
    images = np.zeros((len(labels), 4, 4), dtype=np.uint8)
    names = [f"class{index}" for index in range(labels.max() + 1)]
    return Dataset("toy", images, labels, names, np.asarray(patients), official, False)


def _assert_no_leakage(ds, split):
    parts = [set(ds.patient_ids[part].tolist()) for part in (split.train, split.val, split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    every = np.concatenate([split.train, split.val, split.test])
    assert sorted(every.tolist()) == list(range(len(ds.labels)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_split_has_no_leakage_and_80_10_10(seed):
    ds = make_phantom(700, 32, seed)
    split = split_dataset(ds, seed)
    _assert_no_leakage(ds, split)
    fractions = np.array([len(split.train), len(split.val), len(split.test)]) / 700
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.02)
    for part in (split.train, split.val, split.test):
        assert set(ds.labels[part].tolist()) == set(range(7))  # every class in every split


def test_split_is_fixed_by_seed():
    ds = make_phantom(300, 32, 0)
    first, again, other = split_dataset(ds, 5), split_dataset(ds, 5), split_dataset(ds, 6)
    np.testing.assert_array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)


def test_class_proportions_are_kept_per_split():
    labels = np.repeat([0, 1], [400, 100])
    ds = _dataset(labels, [f"p{index // 2}" for index in range(500)])
    split = split_dataset(ds, 0)
    for part in (split.train, split.val, split.test):
        assert np.mean(ds.labels[part] == 1) == pytest.approx(0.2, abs=0.02)


def test_custom_fractions():
    ds = _dataset(np.arange(200) % 2, [f"p{index}" for index in range(200)])
    split = split_dataset(ds, 0, fractions=(0.6, 0.2, 0.2))
    assert (len(split.train), len(split.val), len(split.test)) == (120, 40, 40)
    assert "effectively image-level" in split.notes[-1]


def test_official_split_is_kept_verbatim():
    official = {"train": np.array([0, 1, 2, 3]), "val": np.array([4]), "test": np.array([5])}
    ds = _dataset([0, 1, 0, 1, 0, 1], list("abcdef"), official)
    split = split_dataset(ds, seed=9)
    assert split.train.tolist() == [0, 1, 2, 3] and split.val.tolist() == [4]
    assert split.notes[0].startswith("official split of the source kept")
    assert any("official val split has no images of 'class1'" in note for note in split.notes)


def test_tiny_class_is_reported_not_crashed():
    labels = [0] * 40 + [1, 1]
    patients = [f"p{index}" for index in range(40)] + ["rare1", "rare2"]
    ds = _dataset(labels, patients)
    split = split_dataset(ds, 0)
    _assert_no_leakage(ds, split)
    note = next(note for note in split.notes if "class1" in note)
    assert "2 images from 2 patient(s)" in note and "absent from val" in note
    assert set(ds.labels[split.train].tolist()) == {0, 1}
    assert set(ds.labels[split.test].tolist()) == {0, 1}


def test_mixed_label_patient_stays_whole_and_is_reported():
    labels = [0] * 30 + [1] * 6 + [0, 1]
    patients = [f"p{index}" for index in range(36)] + ["mixed", "mixed"]
    ds = _dataset(labels, patients)
    split = split_dataset(ds, 0)
    _assert_no_leakage(ds, split)
    assert any(
        note.startswith("1 patient(s) have images of more than one class") for note in split.notes
    )


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(DataError, match="2 patient"):
        split_dataset(_dataset([0, 1, 0, 1], ["a", "a", "b", "b"]), 0)


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.9, 0.1, 0.0), (0.5, 0.3, 0.3)])
def test_bad_fractions_are_rejected(fractions):
    ds = _dataset([0, 1] * 5, list("abcdefghij"))
    with pytest.raises(ValueError, match="fractions must be three positive numbers summing to 1"):
        split_dataset(ds, 0, fractions=fractions)


def test_shared_covid_split_has_no_leakage_and_reports_ards():
    ds = load_dataset(str(shared_file("data/covid_cxr_128.npz")))
    split = split_dataset(ds, 0)
    _assert_no_leakage(ds, split)
    assert any("'ARDS' has 4 images from 4 patient(s)" in note for note in split.notes)
    assert len(split.train) / len(ds.labels) == pytest.approx(0.8, abs=0.03)

"""Loaders of benchmarks.study.data: every source type, every bad-data error, the shared files."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import shared_file
from PIL import Image

from benchmarks.study.data.dataset import DataError, Dataset
from benchmarks.study.data.sources import load_dataset


def _images(count: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, size, size), dtype=np.uint8)


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_phantom_source_is_synthetic_and_sized():
    ds = load_dataset("phantom", seed=3, phantom_images=70, phantom_size=40)
    assert ds.synthetic and ds.name == "phantom"
    assert ds.images.shape == (70, 40, 40) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.official_split is None


def test_plain_npz_round_trip_keeps_patient_ids(tmp_path):
    labels = np.array([0, 1, 1, 0, 2, 2])
    path = _save_npz(
        tmp_path / "mine.npz",
        images=_images(6),
        labels=labels,
        class_names=np.array(["a", "b", "c"]),
        patient_ids=np.array(["p1", "p1", "p2", "p3", "p4", "p4"]),
    )
    ds = load_dataset(path)
    assert ds.name == "mine" and not ds.synthetic
    assert ds.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.labels, labels)
    assert list(ds.patient_ids) == ["p1", "p1", "p2", "p3", "p4", "p4"]


def test_npz_without_patient_ids_treats_each_image_as_a_patient(tmp_path):
    path = _save_npz(
        tmp_path / "x.npz", images=_images(4), labels=np.array([0, 1, 0, 1]), class_names=["a", "b"]
    )
    assert len(set(load_dataset(path).patient_ids)) == 4


def test_float_images_in_unit_range_are_scaled_to_uint8(tmp_path):
    images = np.full((2, 4, 4), 0.5, dtype=np.float32)
    path = _save_npz(tmp_path / "f.npz", images=images, labels=[0, 1], class_names=["a", "b"])
    assert load_dataset(path).images.max() == 128


def test_medmnist_layout_keeps_official_split(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # names must not depend on an install
    arrays = {}
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = _images(count)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8)
    ds = load_dataset(_save_npz(tmp_path / "pneumoniamnist.npz", **arrays))
    assert ds.class_names == ["normal", "pneumonia"]
    assert [len(ds.official_split[name]) for name in ("train", "val", "test")] == [6, 2, 3]
    np.testing.assert_array_equal(ds.official_split["val"], [6, 7])
    generic = load_dataset(_save_npz(tmp_path / "othermnist.npz", **arrays))
    assert generic.class_names == ["class 0", "class 1"]


def test_folder_with_labels_csv_reads_names_and_patients(tmp_path):
    for index, size in enumerate((20, 30, 25, 40)):
        Image.fromarray(np.full((size, size), 40 * index, np.uint8)).save(tmp_path / f"{index}.png")
    (tmp_path / "labels.csv").write_text(
        "path,label,patient_id\n0.png,cat,p1\n1.png,dog,p1\n2.png,dog,p2\n3.png,cat,p3\n"
    )
    ds = load_dataset(str(tmp_path), folder_image_size=16)
    assert ds.images.shape == (4, 16, 16)
    assert ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 1, 1, 0]
    assert ds.patient_ids.tolist() == ["p1", "p1", "p2", "p3"]
    assert ds.images[3].mean() == pytest.approx(120, abs=1)


def test_folder_of_class_subfolders(tmp_path):
    for name in ("normal", "sick"):
        (tmp_path / name).mkdir()
        for index in range(2):
            Image.fromarray(_images(1, 12)[0]).save(tmp_path / name / f"{name}{index}.png")
    ds = load_dataset(str(tmp_path), folder_image_size=12)
    assert ds.class_names == ["normal", "sick"]
    assert ds.labels.tolist() == [0, 0, 1, 1]


def test_error_missing_keys_names_them(tmp_path):
    path = _save_npz(tmp_path / "bad.npz", images=_images(2), labels=[0, 1])
    with pytest.raises(DataError, match=r"lacks keys \['class_names'\]"):
        load_dataset(path)


def test_error_missing_medmnist_keys(tmp_path):
    path = _save_npz(tmp_path / "m.npz", train_images=_images(2), train_labels=[[0], [1]])
    with pytest.raises(DataError, match="val_images"):
        load_dataset(path)


def test_error_single_class(tmp_path):
    path = _save_npz(
        tmp_path / "one.npz", images=_images(3), labels=[1, 1, 1], class_names=["a", "b"]
    )
    with pytest.raises(DataError, match=r"one class \('b'\)"):
        load_dataset(path)


def test_error_label_out_of_range(tmp_path):
    path = _save_npz(
        tmp_path / "r.npz", images=_images(3), labels=[0, 1, 5], class_names=["a", "b"]
    )
    with pytest.raises(DataError, match=r"label 5 is out of range; labels must lie in \[0, 1\]"):
        load_dataset(path)


def test_error_negative_label_in_csv(tmp_path):
    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,label\na.png,-1\na.png,0\n")
    with pytest.raises(DataError, match="label -1 is out of range"):
        load_dataset(str(tmp_path))


def test_error_unreadable_image_names_the_file(tmp_path):
    Image.fromarray(_images(1)[0]).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "labels.csv").write_text("path,label\ngood.png,a\nbroken.png,b\n")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_dataset(str(tmp_path))


def test_error_missing_image_file(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\nnowhere.png,a\n")
    with pytest.raises(DataError, match="nowhere.png"):
        load_dataset(str(tmp_path))


def test_error_labels_csv_without_header(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class\na.png,0\n")
    with pytest.raises(DataError, match=r"needs the header path,label"):
        load_dataset(str(tmp_path))


def test_error_empty_folder(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(str(tmp_path))


def test_error_unknown_source_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))


def test_error_corrupt_npz_never_suggests_unpickling(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"garbage" * 20)
    with pytest.raises(
        DataError, match=r"c\.npz is not a \.npz archive .*truncated, corrupt"
    ) as error:
        load_dataset(str(tmp_path / "c.npz"))
    assert "pickle" not in str(error.value)
    whole = tmp_path / "whole.npz"
    np.savez(whole, images=_images(4), labels=np.array([0, 1, 0, 1]), class_names=["a", "b"])
    (tmp_path / "half.npz").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=r"half\.npz is (not a|a corrupt) \.npz archive"):
        load_dataset(str(tmp_path / "half.npz"))


def test_error_npz_of_python_objects_names_the_array_and_is_not_unpickled(tmp_path):
    ragged = np.array([np.zeros((2, 2)), np.zeros((3, 3))], dtype=object)
    np.savez(tmp_path / "o.npz", images=ragged, labels=np.array([0, 1]), class_names=["a", "b"])
    with pytest.raises(DataError, match=r"array 'images' holds Python objects, which the study"):
        load_dataset(str(tmp_path / "o.npz"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_non_finite_pixels_are_refused_not_turned_into_zero(bad):
    images = np.full((3, 4, 4), 0.5)
    images[1, 2, 3] = bad
    with pytest.raises(
        DataError, match=r"1 image\(s\) hold NaN or infinite pixels \(first: image 1\)"
    ):
        Dataset("d", images, [0, 1, 0], ["a", "b"], ["p", "q", "r"], None, False)


def test_error_bad_image_shape_and_range():
    with pytest.raises(DataError, match=r"images have shape \(2, 4\)"):
        Dataset("d", np.zeros((2, 4)), np.array([0, 1]), ["a", "b"], ["p", "q"], None, False)
    with pytest.raises(DataError, match=r"pixel values span \[0, 300\]"):
        Dataset("d", np.array([[[0, 300]], [[0, 1]]]), [0, 1], ["a", "b"], ["p", "q"], None, False)


def test_error_mismatched_lengths():
    with pytest.raises(DataError, match="3 images but 2 labels"):
        Dataset("d", _images(3), np.array([0, 1]), ["a", "b"], ["p", "q", "r"], None, False)


def test_error_multilabel_medmnist(tmp_path):
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = _images(2)
        arrays[f"{split}_labels"] = np.zeros((2, 14), dtype=np.uint8)
    with pytest.raises(DataError, match="multi-label sets are not supported"):
        load_dataset(_save_npz(tmp_path / "chestmnist.npz", **arrays))


def test_error_medmnist_package_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)
    with pytest.raises(DataError, match=r"needs the medmnist package \(pip install medmnist\)"):
        load_dataset("medmnist:pneumoniamnist")


def test_shared_covid_file_loads():
    ds = load_dataset(str(shared_file("data/covid_cxr_128.npz")))
    assert ds.images.shape == (518, 128, 128)
    assert ds.class_names == ["COVID-19", "Pneumonia", "No Finding", "ARDS"]
    assert np.bincount(ds.labels).tolist() == [418, 77, 19, 4]
    assert len(set(ds.patient_ids)) == 305 and not ds.synthetic


def test_shared_pneumoniamnist_keeps_official_split():
    ds = load_dataset(str(shared_file("data/pneumoniamnist.npz")))
    assert ds.images.shape[1:] == (28, 28)
    assert [len(ds.official_split[s]) for s in ("train", "val", "test")] == [3882, 524, 624]
    assert ds.class_names == ["normal", "pneumonia"]

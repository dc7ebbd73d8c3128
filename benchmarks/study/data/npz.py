"""``.npz`` data files: the plain layout and the MedMNIST layout (official split kept)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from benchmarks.study.data.dataset import SPLIT_NAMES, DataError, Dataset

# Used only when neither the file nor the installed medmnist package names the classes.
KNOWN_MEDMNIST_CLASS_NAMES = {"pneumoniamnist": ["normal", "pneumonia"]}


def load_npz(path: Path) -> Dataset:
    """Load a ``.npz`` file in the plain or the MedMNIST layout (official split kept).

    Args:
        path: The ``.npz`` file.
    """
    arrays = _read_arrays(path)
    if "images" in arrays or "train_images" not in arrays:
        return _plain_npz(arrays, path)
    return _medmnist_npz(arrays, path)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, refusing pickled objects (loading them would run code)."""
    if not zipfile.is_zipfile(path):
        # numpy would try the file as a pickle and suggest loading it unsafely
        raise DataError(
            f"{path} is not a .npz archive (a .npz file is a zip of .npy arrays; this one is "
            "truncated, corrupt or of another format)"
        )
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError as error:
                    if "allow_pickle" not in str(error):
                        raise
                    raise DataError(
                        f"{path}: array {key!r} holds Python objects, which the study does not "
                        "load (unpickling can run arbitrary code); save numeric arrays and "
                        "class names as strings, e.g. np.savez(path, images=uint8_array, "
                        "labels=int_array, class_names=np.array(names, dtype=str))"
                    ) from None
    except DataError:
        raise
    except Exception as error:  # zipfile and numpy raise several unrelated types
        raise DataError(f"{path} is a corrupt .npz archive: {error}") from error
    return arrays


def _plain_npz(arrays: dict[str, np.ndarray], path: Path) -> Dataset:
    missing = [key for key in ("images", "labels", "class_names") if key not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks keys {missing} (has {sorted(arrays)}); a data file needs images, "
            "labels, class_names and optionally patient_ids, or the MedMNIST layout "
            "train_images/val_images/test_images with matching *_labels"
        )
    patient_ids = arrays.get("patient_ids")
    if patient_ids is None:
        patient_ids = _one_patient_per_image(len(arrays["images"]))
    return Dataset(
        name=path.stem,
        images=arrays["images"],
        labels=arrays["labels"],
        class_names=list(arrays["class_names"]),
        patient_ids=patient_ids,
        official_split=None,
        synthetic=False,
    )


def _one_patient_per_image(count: int) -> np.ndarray:
    # Without ids every image is its own patient, so the split degrades to image level.
    return np.array([f"image-{index}" for index in range(count)])


def _medmnist_npz(arrays: dict[str, np.ndarray], path: Path) -> Dataset:
    needed = [f"{split}_{kind}" for split in SPLIT_NAMES for kind in ("images", "labels")]
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise DataError(f"{path} looks like the MedMNIST layout but lacks keys {missing}")
    labels_per_split = []
    for split in SPLIT_NAMES:
        labels = arrays[f"{split}_labels"]
        if labels.ndim == 2 and labels.shape[1] != 1:
            raise DataError(
                f"{path}: {split}_labels has shape {labels.shape}; multi-label sets are not "
                "supported (one class per image is required)"
            )
        labels_per_split.append(labels.reshape(-1))
    sizes = [len(arrays[f"{split}_images"]) for split in SPLIT_NAMES]
    starts = np.cumsum([0, *sizes])
    official = {split: np.arange(starts[i], starts[i + 1]) for i, split in enumerate(SPLIT_NAMES)}
    labels = np.concatenate(labels_per_split)
    return Dataset(
        name=path.stem,
        images=np.concatenate([arrays[f"{split}_images"] for split in SPLIT_NAMES]),
        labels=labels,
        class_names=_medmnist_class_names(arrays, path.stem, labels),
        patient_ids=_one_patient_per_image(len(labels)),
        official_split=official,
        synthetic=False,
    )


def _medmnist_class_names(arrays: dict[str, np.ndarray], stem: str, labels: np.ndarray) -> list:
    if "class_names" in arrays:
        return list(arrays["class_names"])
    flag = stem.split("_")[0].lower()  # "pneumoniamnist_64.npz" holds the 64-px version
    try:
        from medmnist import INFO

        label_map = INFO[flag]["label"]
        return [label_map[str(index)] for index in range(len(label_map))]
    except (ImportError, KeyError):
        pass
    if flag in KNOWN_MEDMNIST_CLASS_NAMES:
        return list(KNOWN_MEDMNIST_CLASS_NAMES[flag])
    return [f"class {index}" for index in range(int(labels.max()) + 1 if len(labels) else 0)]


def load_medmnist(flag: str) -> Dataset:
    try:
        import medmnist
    except ImportError as error:
        raise DataError(
            f"'medmnist:{flag}' needs the medmnist package (pip install medmnist); "
            "or download the .npz yourself and pass its path"
        ) from error
    flag = flag.lower()
    if flag not in medmnist.INFO:
        raise DataError(f"unknown MedMNIST set {flag!r}; known: {sorted(medmnist.INFO)}")
    root = Path.home() / ".medmnist"
    root.mkdir(parents=True, exist_ok=True)
    data_class = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    try:
        data_class(split="train", download=True, root=str(root))
    except Exception as error:  # network failures surface as many different exception types
        raise DataError(
            f"could not download MedMNIST set {flag!r} into {root} (offline?): {error}"
        ) from error
    return load_npz(root / f"{flag}.npz")

"""Data sources for the study: the built-in phantom, ``.npz`` files, MedMNIST and image folders.

Every loader returns a :class:`Dataset` whose arrays have been checked, so the runners can rely on
uint8 images, int64 labels in ``[0, C)``, one string patient id per image and at least two
classes. Anything else raises :class:`DataError` with a message that names the bad value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MEDMNIST_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
# Used only when neither the file nor the installed medmnist package names the classes.
KNOWN_MEDMNIST_CLASS_NAMES = {"pneumoniamnist": ["normal", "pneumonia"]}


class DataError(ValueError):
    """A data source is missing, unreadable or inconsistent."""


@dataclass
class Dataset:
    """An image classification data set, validated on construction.

    Args:
        name: Short name used in reports (file stem, folder name or ``"phantom"``).
        images: uint8 array, ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` colour.
        labels: int64 array ``(N,)`` with values in ``[0, len(class_names))``.
        class_names: One name per class index.
        patient_ids: str array ``(N,)``; images of one patient share an id (splits group on it).
        official_split: ``{"train", "val", "test"} -> index arrays`` when the source defines its
            own split, else ``None``.
        synthetic: ``True`` for generated data whose numbers must never be read as clinical.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    patient_ids: np.ndarray
    official_split: dict[str, np.ndarray] | None
    synthetic: bool

    def __post_init__(self) -> None:
        self.images = _as_uint8_images(self.images, self.name)
        self.class_names = [str(name) for name in self.class_names]
        self.labels = _as_labels(self.labels, len(self.class_names), self.name)
        count = len(self.images)
        if len(self.labels) != count:
            raise DataError(f"{self.name}: {count} images but {len(self.labels)} labels")
        self.patient_ids = np.asarray(self.patient_ids).astype(str)
        if self.patient_ids.shape != (count,):
            raise DataError(
                f"{self.name}: patient_ids has shape {self.patient_ids.shape}, expected ({count},)"
            )
        present = np.unique(self.labels)
        if len(present) < 2:
            only = self.class_names[int(present[0])] if len(present) else "none"
            raise DataError(
                f"{self.name}: all {count} images belong to one class ({only!r}); "
                "a classification study needs at least two classes"
            )
        if self.official_split is not None:
            self.official_split = _checked_split(self.official_split, count, self.name)

    @property
    def num_classes(self) -> int:
        """Number of class names (classes absent from the images still count)."""
        return len(self.class_names)


def load_dataset(
    source: str,
    *,
    seed: int = 0,
    phantom_images: int = 700,
    phantom_size: int = 96,
    folder_image_size: int = 256,
) -> Dataset:
    """Load a data set from a source string.

    Args:
        source: ``"phantom"`` (synthetic, generated on the fly), ``PATH.npz`` (keys ``images``,
            ``labels``, ``class_names`` [, ``patient_ids``] or the MedMNIST layout
            ``train_images``/``val_images``/``test_images`` + ``*_labels``), ``"medmnist:NAME"``
            (downloaded by the ``medmnist`` package) or a folder (``labels.csv`` with
            ``path,label[,patient_id]``, or one sub-folder per class).
        seed: Seed of the phantom generator (default 0); ignored by real sources.
        phantom_images: Number of phantom images (default 700).
        phantom_size: Side of the square phantom images in pixels (default 96).
        folder_image_size: Side in pixels that folder images are resized to (default 256), since
            real radiographs come in many sizes and must stack into one array.

    Returns:
        The validated :class:`Dataset`.

    Raises:
        DataError: The source is unknown, missing or holds bad data.
    """
    if source == "phantom":
        from benchmarks.phantom import make_phantom  # phantom imports Dataset from here

        return make_phantom(phantom_images, phantom_size, seed)
    if source.startswith("medmnist:"):
        return _load_medmnist(source.split(":", 1)[1])
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, folder_image_size)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        return load_npz(path)
    raise DataError(
        f"unknown data source {source!r}: use 'phantom', a PATH.npz file, 'medmnist:NAME' "
        "or a folder of images"
    )


def load_npz(path: Path) -> Dataset:
    """Load a ``.npz`` file in the plain or the MedMNIST layout (official split kept).

    Args:
        path: The ``.npz`` file.
    """
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # numpy raises several unrelated types for corrupt archives
        raise DataError(f"cannot read {path} as a NumPy .npz archive: {error}") from error
    if "images" in arrays or "train_images" not in arrays:
        return _plain_npz(arrays, path)
    return _medmnist_npz(arrays, path)


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
    needed = [f"{split}_{kind}" for split in MEDMNIST_SPLITS for kind in ("images", "labels")]
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise DataError(f"{path} looks like the MedMNIST layout but lacks keys {missing}")
    labels_per_split = []
    for split in MEDMNIST_SPLITS:
        labels = arrays[f"{split}_labels"]
        if labels.ndim == 2 and labels.shape[1] != 1:
            raise DataError(
                f"{path}: {split}_labels has shape {labels.shape}; multi-label sets are not "
                "supported (one class per image is required)"
            )
        labels_per_split.append(labels.reshape(-1))
    sizes = [len(arrays[f"{split}_images"]) for split in MEDMNIST_SPLITS]
    starts = np.cumsum([0, *sizes])
    official = {
        split: np.arange(starts[i], starts[i + 1]) for i, split in enumerate(MEDMNIST_SPLITS)
    }
    labels = np.concatenate(labels_per_split)
    return Dataset(
        name=path.stem,
        images=np.concatenate([arrays[f"{split}_images"] for split in MEDMNIST_SPLITS]),
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


def _load_medmnist(flag: str) -> Dataset:
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


def _load_folder(folder: Path, image_size: int) -> Dataset:
    if image_size < 8:
        raise DataError(f"folder_image_size must be at least 8 pixels, got {image_size}")
    table = folder / "labels.csv"
    if table.is_file():
        paths, raw_labels, patient_ids = _read_labels_csv(table)
        class_names, labels = _encode_labels(raw_labels, table)
    else:
        class_dirs = sorted(entry for entry in folder.iterdir() if entry.is_dir())
        paths, labels = [], []
        for index, class_dir in enumerate(class_dirs):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(file)
                    labels.append(index)
        class_names = [entry.name for entry in class_dirs]
        patient_ids = [file.stem for file in paths]
    if not paths:
        raise DataError(
            f"{folder} holds no images: expected labels.csv (path,label[,patient_id]) or class "
            f"sub-folders with {', '.join(IMAGE_SUFFIXES)} files"
        )
    images = np.stack([_read_image(path, image_size) for path in paths])
    return Dataset(
        name=folder.name,
        images=images,
        labels=np.asarray(labels),
        class_names=class_names,
        patient_ids=np.asarray(patient_ids),
        official_split=None,
        synthetic=False,
    )


def _read_labels_csv(table: Path) -> tuple[list[Path], list[str], list[str]]:
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "path" not in columns or "label" not in columns:
            raise DataError(f"{table} needs the header path,label[,patient_id]; got {columns}")
        rows = list(reader)
    paths = [table.parent / row["path"] for row in rows]
    patient_ids = [row.get("patient_id") or Path(row["path"]).stem for row in rows]
    return paths, [row["label"].strip() for row in rows], patient_ids


def _encode_labels(raw_labels: list[str], table: Path) -> tuple[list[str], list[int]]:
    """Integer labels are class indices; any other text names the class (sorted order)."""
    try:
        indices = [int(label) for label in raw_labels]
    except ValueError:
        class_names = sorted(set(raw_labels))
        lookup = {name: index for index, name in enumerate(class_names)}
        return class_names, [lookup[label] for label in raw_labels]
    if indices and min(indices) < 0:
        raise DataError(f"{table}: label {min(indices)} is out of range (labels must be >= 0)")
    return [str(index) for index in range(max(indices, default=-1) + 1)], indices


def _read_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            gray = opened.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error


def _as_uint8_images(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DataError(
            f"{name}: images have shape {images.shape}; expected (N, H, W) or (N, H, W, 3)"
        )
    if len(images) == 0:
        raise DataError(f"{name}: no images")
    if images.dtype == np.uint8:
        return images
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{name}: images have dtype {images.dtype}; expected numbers")
    low, high = float(images.min()), float(images.max())
    if np.issubdtype(images.dtype, np.floating) and high <= 1.0 and low >= 0.0:
        images = images * 255.0  # float images in [0, 1] are the other common convention
        low, high = low * 255.0, high * 255.0
    if low < 0 or high > 255:
        raise DataError(
            f"{name}: pixel values span [{low:g}, {high:g}]; expected uint8 or values in 0..255"
        )
    return np.rint(images).astype(np.uint8)


def _as_labels(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{name}: labels have shape {labels.shape} and dtype {labels.dtype}; "
            "expected one integer class index per image"
        )
    if num_classes == 0:
        raise DataError(f"{name}: class_names is empty")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataError(
            f"{name}: label {int(bad[0])} is out of range; labels must lie in "
            f"[0, {num_classes - 1}] for {num_classes} class names"
        )
    return labels.astype(np.int64)


def _checked_split(split: dict[str, np.ndarray], count: int, name: str) -> dict[str, np.ndarray]:
    if sorted(split) != sorted(MEDMNIST_SPLITS):
        raise DataError(f"{name}: official_split keys are {sorted(split)}; expected train/val/test")
    checked = {key: np.asarray(split[key], dtype=np.int64) for key in MEDMNIST_SPLITS}
    every = np.concatenate(list(checked.values()))
    if len(every) and (every.min() < 0 or every.max() >= count):
        raise DataError(f"{name}: official_split holds indices outside [0, {count - 1}]")
    if len(np.unique(every)) != len(every):
        raise DataError(f"{name}: official_split uses some image in more than one split")
    return checked

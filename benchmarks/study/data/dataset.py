"""The validated in-memory data set every loader returns, and the error every loader raises.

A :class:`Dataset` checks its arrays on construction, so the runners can rely on uint8 images,
int64 labels in ``[0, C)``, one string patient id per image and at least two classes. Anything
else raises :class:`DataError` with a message that names the bad value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


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
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            f"{name}: {len(bad)} image(s) hold NaN or infinite pixels (first: image {bad[0]}); "
            "pixels must be finite numbers in 0..255 (or 0..1 for floats)"
        )
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
    if sorted(split) != sorted(SPLIT_NAMES):
        raise DataError(f"{name}: official_split keys are {sorted(split)}; expected train/val/test")
    checked = {key: np.asarray(split[key], dtype=np.int64) for key in SPLIT_NAMES}
    every = np.concatenate(list(checked.values()))
    if len(every) and (every.min() < 0 or every.max() >= count):
        raise DataError(f"{name}: official_split holds indices outside [0, {count - 1}]")
    if len(np.unique(every)) != len(every):
        raise DataError(f"{name}: official_split uses some image in more than one split")
    return checked

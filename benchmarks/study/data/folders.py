"""Image folders: ``labels.csv`` (``path,label[,patient_id]``) or one sub-folder per class."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from benchmarks.study.data.dataset import DataError, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def load_folder(folder: Path, image_size: int) -> Dataset:
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

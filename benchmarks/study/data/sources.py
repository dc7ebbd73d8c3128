"""One entry point for every data source of the study: ``load_dataset(source)``."""

from __future__ import annotations

from pathlib import Path

from benchmarks.study.data.dataset import DataError, Dataset
from benchmarks.study.data.folders import load_folder
from benchmarks.study.data.npz import load_medmnist, load_npz
from benchmarks.study.data.phantom import make_phantom


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
        return make_phantom(phantom_images, phantom_size, seed)
    if source.startswith("medmnist:"):
        return load_medmnist(source.split(":", 1)[1])
    path = Path(source).expanduser()
    if path.is_dir():
        return load_folder(path, folder_image_size)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        return load_npz(path)
    raise DataError(
        f"unknown data source {source!r}: use 'phantom', a PATH.npz file, 'medmnist:NAME' "
        "or a folder of images"
    )

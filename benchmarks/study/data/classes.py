"""Leaving classes out of a data set (``--drop-classes``): too few images to learn or to measure.

A class of a handful of images cannot be learned from the one or two that reach the training
split, and the one that reaches the test split decides ``1 / C`` of the balanced accuracy on its
own (on the COVID set, ``ARDS`` has 4 images of 4 patients: 2 train, 1 validation, 1 test; see
``docs/benchmarks.md``). Leaving such a class out is a change of the task, so it is only ever
done on request and always reported.
"""

from __future__ import annotations

import numpy as np

from benchmarks.study.data.dataset import DataError, Dataset


def without_classes(ds: Dataset, names: tuple[str, ...]) -> tuple[Dataset, list[str]]:
    """``ds`` without the images of the classes ``names``, labels renumbered in the old order.

    Args:
        ds: The data set.
        names: Class names to leave out (none: ``ds`` is returned unchanged).

    Returns:
        The new data set and one note per class left out, for the report.

    Raises:
        DataError: A name is not a class of ``ds``, or fewer than two classes would remain.
    """
    if not names:
        return ds, []
    unknown = [name for name in names if name not in ds.class_names]
    if unknown:
        raise DataError(
            f"--drop-classes: {unknown} not among the classes of {ds.name} {ds.class_names}"
        )
    dropped = [ds.class_names.index(name) for name in names]
    kept = [label for label in range(ds.num_classes) if label not in dropped]
    if len(kept) < 2:
        raise DataError(
            f"--drop-classes {','.join(names)} leaves {len(kept)} class(es) of {ds.class_names}; "
            "a classification study needs at least two"
        )
    new_label = np.full(ds.num_classes, -1)
    new_label[kept] = np.arange(len(kept))
    keep = new_label[ds.labels] >= 0
    official = None
    if ds.official_split is not None:
        # positions of the kept images in the new arrays, split by split
        position = np.cumsum(keep) - 1
        official = {
            part: position[indices[keep[indices]]] for part, indices in ds.official_split.items()
        }
    notes = []
    for label, name in zip(dropped, names, strict=True):
        members = ds.labels == label
        patients = len(np.unique(ds.patient_ids[members]))
        notes.append(
            f"class {name!r} left out (--drop-classes): {int(members.sum())} images of "
            f"{patients} patient(s) removed before the split"
        )
    subset = Dataset(
        name=ds.name,
        images=ds.images[keep],
        labels=new_label[ds.labels[keep]],
        class_names=[ds.class_names[label] for label in kept],
        patient_ids=ds.patient_ids[keep],
        official_split=official,
        synthetic=ds.synthetic,
    )
    return subset, notes

"""Patient-level train/validation/test split, stratified by class as far as the data allow.

All images of one patient land in one split (no leakage). Patients are stratified by their class:
within each class, every split first receives one patient (when the class has at least three),
then the remaining patients, largest first, go to whichever split is furthest below its target
image count. Classes too small for that are placed train first, then test, then val, and are
reported in :attr:`Split.notes` rather than raising.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from benchmarks.study.data.dataset import DataError, Dataset

SPLIT_NAMES = ("train", "val", "test")
# A tiny class is filled train first so it can be learned, then test so it can be measured.
TINY_CLASS_ORDER = (0, 2, 1)


@dataclass
class Split:
    """Index arrays into a :class:`Dataset` and what the splitter had to report.

    Args:
        train: Sorted int64 indices of the training images.
        val: Sorted int64 indices of the validation images.
        test: Sorted int64 indices of the test images.
        notes: Human-readable remarks (official split used, tiny classes, mixed-label patients).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    notes: list[str] = field(default_factory=list)


def split_dataset(
    ds: Dataset, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> Split:
    """Split a data set at patient level.

    Args:
        ds: The data set; its ``official_split`` is kept as is when present.
        seed: Seed that fixes the assignment (same seed, same split).
        fractions: Target image fractions for train, val and test (default 0.8/0.1/0.1); three
            positive numbers summing to 1.

    Returns:
        The :class:`Split`, with notes for anything that deviates from the plain protocol.

    Raises:
        ValueError: ``fractions`` is malformed.
        DataError: The data set has fewer than three patients.
    """
    targets = np.asarray(fractions, dtype=float)
    if targets.shape != (3,) or np.any(targets <= 0) or not np.isclose(targets.sum(), 1.0):
        raise ValueError(
            f"fractions must be three positive numbers summing to 1 (train, val, test), "
            f"got {fractions}"
        )
    if ds.official_split is not None:
        return _official(ds, ds.official_split)
    patients, patient_of_image = np.unique(ds.patient_ids, return_inverse=True)
    if len(patients) < 3:
        raise DataError(
            f"{ds.name}: {len(patients)} patient(s); a train/val/test split needs at least 3"
        )
    images_per_patient = np.bincount(patient_of_image)
    stratum, notes = _patient_strata(ds, patient_of_image, len(patients))
    rng = np.random.default_rng(seed)
    tie_breaker = rng.permutation(len(patients))
    assignment = np.full(len(patients), -1)
    for label in range(ds.num_classes):
        members = np.flatnonzero(stratum == label)
        if len(members) == 0:
            continue
        # Largest patients first packs the image targets tightly; the permutation breaks ties.
        members = members[np.lexsort((tie_breaker[members], -images_per_patient[members]))]
        sizes = images_per_patient[members]
        if len(members) < 3:
            for position, patient in enumerate(members):
                assignment[patient] = TINY_CLASS_ORDER[position]
        else:
            _fill_class(members, sizes, targets, assignment)
        notes.extend(_tiny_class_note(ds, label, members, sizes, assignment, targets))
    split_of_image = assignment[patient_of_image]
    indices = [np.flatnonzero(split_of_image == part) for part in range(3)]
    summary = ", ".join(
        f"{name} {len(part)} images ({len(np.unique(patient_of_image[part]))} patients)"
        for name, part in zip(SPLIT_NAMES, indices, strict=True)
    )
    notes.insert(0, f"patient-level split (seed {seed}): {summary}")
    if len(patients) == len(ds.labels):
        notes.append("every patient has one image: the split is effectively image-level")
    return Split(train=indices[0], val=indices[1], test=indices[2], notes=notes)


def _fill_class(members, sizes, targets, assignment) -> None:
    """One patient per split first (the smallest ones for val/test), then greedy by deficit."""
    total = sizes.sum()
    assigned = np.zeros(3)
    seeded = {0: 0, 1: len(members) - 1, 2: len(members) - 2}
    for part, position in seeded.items():
        assignment[members[position]] = part
        assigned[part] += sizes[position]
    for position, patient in enumerate(members):
        if position in seeded.values():
            continue
        part = int(np.argmax(targets * total - assigned))
        assignment[patient] = part
        assigned[part] += sizes[position]


def _patient_strata(ds: Dataset, patient_of_image: np.ndarray, num_patients: int):
    """Each patient's stratum: the rarest class among its images (keeps tail classes visible)."""
    class_sizes = np.bincount(ds.labels, minlength=ds.num_classes)
    rarity = np.argsort(np.argsort(class_sizes, kind="stable"), kind="stable")
    stratum = np.full(num_patients, -1)
    best_rank = np.full(num_patients, ds.num_classes)
    for patient, label in zip(patient_of_image, ds.labels, strict=True):
        if rarity[label] < best_rank[patient]:
            best_rank[patient], stratum[patient] = rarity[label], label
    labels_per_patient = Counter(
        patient
        for patient, _ in set(zip(patient_of_image.tolist(), ds.labels.tolist(), strict=True))
    )
    mixed = sum(1 for count in labels_per_patient.values() if count > 1)
    notes = []
    if mixed:
        notes.append(
            f"{mixed} patient(s) have images of more than one class; each is stratified by its "
            "rarest class and kept whole"
        )
    return stratum, notes


def _tiny_class_note(ds, label, members, sizes, assignment, targets) -> list[str]:
    """Report classes whose smallest split target is under one image or that miss a split."""
    images = int(sizes.sum())
    per_split = [int(sizes[assignment[members] == part].sum()) for part in range(3)]
    if images * targets.min() >= 1.0 and all(per_split):
        return []
    placed = ", ".join(
        f"{name} {count}" for name, count in zip(SPLIT_NAMES, per_split, strict=True)
    )
    missing = [name for name, count in zip(SPLIT_NAMES, per_split, strict=True) if count == 0]
    absent = f"; absent from {'/'.join(missing)}" if missing else ""
    return [
        f"class {ds.class_names[label]!r} has {images} images from {len(members)} patient(s), "
        f"too few to stratify into train/val/test at the target fractions: placed {placed}"
        f"{absent}"
    ]


def _official(ds: Dataset, official: dict[str, np.ndarray]) -> Split:
    indices = [np.sort(official[name]) for name in SPLIT_NAMES]
    notes = [
        "official split of the source kept: "
        + ", ".join(
            f"{name} {len(part)} images" for name, part in zip(SPLIT_NAMES, indices, strict=True)
        )
    ]
    for name, part in zip(SPLIT_NAMES, indices, strict=True):
        missing = sorted(set(range(ds.num_classes)) - set(ds.labels[part].tolist()))
        if missing:
            absent = ", ".join(repr(ds.class_names[label]) for label in missing)
            notes.append(f"official {name} split has no images of {absent}")
    patient_sets = [set(ds.patient_ids[part].tolist()) for part in indices]
    shared = (patient_sets[0] & patient_sets[1]) | (patient_sets[0] & patient_sets[2])
    shared |= patient_sets[1] & patient_sets[2]
    if shared:
        notes.append(f"official split puts {len(shared)} patient id(s) in more than one split")
    return Split(train=indices[0], val=indices[1], test=indices[2], notes=notes)

"""Class imbalance handling from the paper: Eq. 14 weights, balanced sampling, minority classes."""

from __future__ import annotations

import numpy as np


def _checked_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"label {int(bad[0])} is out of range [0, {num_classes - 1}]")
    return labels


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Loss weights of Eq. 14, ``w_i = N / (C * n_i)``.

    ``N`` is the number of training labels and ``C`` is ``num_classes`` (all classes, present or
    not). A class with no training images gets weight 0: it contributes no loss terms anyway and
    an infinite weight would only poison mixed-precision arithmetic.

    Args:
        labels: Integer training labels in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.

    Returns:
        float64 array ``(num_classes,)``.
    """
    labels = _checked_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = len(labels) / (num_classes * counts[present])
    return weights


def balanced_indices(labels: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Indices for one class-balanced epoch, drawn with replacement.

    Every class present in ``labels`` is equally likely per draw, and images within a class are
    equally likely, so minority images recur and majority images are subsampled.

    Args:
        labels: Integer labels of the training images (``>= 0``).
        num_samples: Number of indices to draw (usually the training set size).
        rng: NumPy generator that makes the draw reproducible.

    Returns:
        int64 array ``(num_samples,)`` of positions into ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    labels = _checked_labels(labels, int(labels.max()) + 1)
    counts = np.bincount(labels)
    present_classes = np.count_nonzero(counts)
    probabilities = 1.0 / (present_classes * counts[labels])
    return rng.choice(len(labels), size=num_samples, replace=True, p=probabilities).astype(np.int64)


def minority_mask(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Which classes count as minority: fewer images than the mean per class, ``n_i < N / C``.

    This is exactly the set with an Eq. 14 weight above 1, so augmentation and loss weighting
    agree on which classes are under-represented. For Table 1 of the paper it selects
    Tuberculosis, Pleural Effusion, Pneumothorax, Pulmonary Edema and Atelectasis. A class absent
    from ``labels`` counts as minority (it has nothing to augment either way).

    Args:
        labels: Integer training labels in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.

    Returns:
        bool array ``(num_classes,)``, indexed by class.
    """
    labels = _checked_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    return counts * num_classes < len(labels)

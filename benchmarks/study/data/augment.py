"""Minority-only augmentation of Table 2 (rotation, brightness, contrast), NumPy/SciPy only."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import rotate

# Table 2 of the paper.
ROTATION_DEGREES = 10.0
BRIGHTNESS_RANGE = (0.8, 1.2)
CONTRAST_RANGE = (0.9, 1.1)


def augment_minority(
    images: np.ndarray,
    labels: np.ndarray,
    minority: np.ndarray,
    rng: np.random.Generator,
    *,
    rotation_degrees: float = ROTATION_DEGREES,
    brightness_range: tuple[float, float] = BRIGHTNESS_RANGE,
    contrast_range: tuple[float, float] = CONTRAST_RANGE,
) -> np.ndarray:
    """Augment the images of minority classes; other images pass through unchanged.

    Each minority image is rotated by a uniform angle in ``±rotation_degrees`` (edges replicated,
    so no black corners appear), multiplied by a brightness factor, then its contrast about its
    own mean is scaled; the result is clipped to 0..255.

    Args:
        images: float32 batch ``(B, H, W, C)`` with values in 0..255 (not modified).
        labels: Integer class of each image, shape ``(B,)``.
        minority: bool per class (e.g. from ``balance.minority_mask``), shape ``(num_classes,)``.
        rng: NumPy generator that makes the augmentation reproducible.
        rotation_degrees: Maximum absolute rotation (default 10, Table 2).
        brightness_range: Brightness factor range (default (0.8, 1.2), Table 2).
        contrast_range: Contrast factor range (default (0.9, 1.1), Table 2).

    Returns:
        float32 array with the shape of ``images``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    minority = np.asarray(minority, dtype=bool)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    bad = labels[(labels < 0) | (labels >= len(minority))]
    if len(bad):
        raise ValueError(f"label {int(bad[0])} has no entry in minority (length {len(minority)})")
    output = images.astype(np.float32, copy=True)
    for index in np.flatnonzero(minority[labels]):
        angle = rng.uniform(-rotation_degrees, rotation_degrees)
        brightness = rng.uniform(*brightness_range)
        contrast = rng.uniform(*contrast_range)
        image = rotate(output[index], angle, axes=(1, 0), reshape=False, order=1, mode="nearest")
        image = image * brightness
        mean = image.mean()
        output[index] = np.clip((image - mean) * contrast + mean, 0.0, 255.0)
    return output

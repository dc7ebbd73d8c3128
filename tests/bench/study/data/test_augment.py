"""Minority-only augmentation with the Table 2 ranges."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.study.data.augment import augment_minority

MINORITY = np.array([False, True])


def _line_angle(image: np.ndarray) -> float:
    """Orientation in degrees of the bright pixels (second moments)."""
    rows, cols = np.nonzero(image[..., 0] > 128)
    rows, cols = rows - rows.mean(), cols - cols.mean()
    covariance = np.cov(np.stack([cols, -rows]))
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    major = eigenvectors[:, np.argmax(eigenvalues)]
    angle = np.degrees(np.arctan2(major[1], major[0]))
    return (angle + 90) % 180 - 90


def test_only_minority_samples_change():
    images = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3)).astype(np.float32)
    original = images.copy()
    labels = np.array([0, 1, 0, 1, 0, 1])
    out = augment_minority(images, labels, MINORITY, np.random.default_rng(1))
    np.testing.assert_array_equal(images, original)  # the input is not modified
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[labels == 0], images[labels == 0])
    for index in np.flatnonzero(labels == 1):
        assert not np.allclose(out[index], images[index])


def test_constant_image_sees_brightness_only_within_range():
    images = np.full((400, 8, 8, 3), 100.0, dtype=np.float32)
    out = augment_minority(images, np.ones(400, int), MINORITY, np.random.default_rng(2))
    assert np.all(out.std(axis=(1, 2, 3)) < 1e-3)  # rotation and contrast keep it constant
    ratios = out[:, 0, 0, 0] / 100.0
    assert ratios.min() >= 0.8 - 1e-5 and ratios.max() <= 1.2 + 1e-5
    assert ratios.min() < 0.83 and ratios.max() > 1.17  # the whole range is used


def test_rotation_stays_within_ten_degrees_and_uses_the_range():
    image = np.zeros((1, 41, 41, 3), dtype=np.float32)
    image[0, 20, 4:37] = 250.0
    angles = []
    for seed in range(60):
        out = augment_minority(
            image,
            np.array([1]),
            MINORITY,
            np.random.default_rng(seed),
            brightness_range=(1, 1),
            contrast_range=(1, 1),
        )
        angles.append(_line_angle(out[0]))
    angles = np.abs(angles)
    assert angles.max() <= 10.5
    assert angles.max() > 7.0 and angles.min() < 3.0


def test_contrast_scales_spread_about_the_mean_within_range():
    image = np.zeros((200, 4, 4, 1), dtype=np.float32)
    image[:, :, :2] = 100.0
    image[:, :, 2:] = 200.0
    out = augment_minority(
        image,
        np.ones(200, int),
        MINORITY,
        np.random.default_rng(3),
        rotation_degrees=0.0,
        brightness_range=(1, 1),
    )
    factors = out.std(axis=(1, 2, 3)) / image.std(axis=(1, 2, 3))
    assert factors.min() >= 0.9 - 1e-4 and factors.max() <= 1.1 + 1e-4
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 150.0, atol=1e-3)


def test_output_is_clipped_to_pixel_range():
    images = np.full((50, 4, 4, 3), 250.0, dtype=np.float32)
    out = augment_minority(images, np.ones(50, int), MINORITY, np.random.default_rng(4))
    assert out.max() <= 255.0 and out.min() >= 0.0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(B, H, W, C\)"):
        augment_minority(np.zeros((2, 4, 4)), np.array([0, 1]), MINORITY, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"label 5 has no entry in minority \(length 2\)"):
        augment_minority(np.zeros((1, 4, 4, 3)), np.array([5]), MINORITY, np.random.default_rng(0))

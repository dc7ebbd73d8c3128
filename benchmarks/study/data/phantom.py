"""A procedural, synthetic chest-X-ray-like data set with the paper's seven classes.

The phantom exists so the whole study runs anywhere without patient data. It is **synthetic**:
numbers measured on it say whether the pipeline works, never anything clinical. Each image is a
frontal "radiograph" (dark lungs, bright mediastinum, heart, ribs and lung markings) drawn from a
per-patient anatomy, with one class-specific pattern a CNN can learn:

* Pneumonia: dense lobar consolidation bounded by a fissure, markings obscured.
* COVID-19: bilateral, peripheral, faint ground-glass patches.
* Tuberculosis: small nodules in the upper zones.
* Pleural Effusion: basal opacity with a meniscus rising laterally.
* Pneumothorax: a thin pleural line with no lung markings lateral to it.
* Pulmonary Edema: bilateral perihilar haze and a larger heart.
* Atelectasis: a plate-like band with volume loss (raised hemidiaphragm, shifted mediastinum).

Class counts follow Table 1 of the paper; patients have one to four images each.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from benchmarks.study.data.dataset import Dataset

# Table 1 of the paper (An Giang Regional General Hospital; 15,416 images).
PAPER_CLASS_COUNTS = {
    "Pneumonia": 10398,
    "COVID-19": 2456,
    "Tuberculosis": 1070,
    "Pleural Effusion": 718,
    "Pneumothorax": 404,
    "Pulmonary Edema": 265,
    "Atelectasis": 105,
}
CLASS_NAMES = list(PAPER_CLASS_COUNTS)
# Enough for one patient in each of train/val/test even in tiny phantoms.
MIN_IMAGES_PER_CLASS = 6
IMAGES_PER_PATIENT = (1, 2, 3, 4)
IMAGES_PER_PATIENT_PROBS = (0.2, 0.35, 0.3, 0.15)
TEXTURE_BANK_SIZE = 8


def class_counts(num_images: int) -> np.ndarray:
    """Images per class: Table 1 proportions (largest remainder), at least 6 per class.

    Args:
        num_images: Total number of images; at least ``6 * 7 = 42``.
    """
    minimum = MIN_IMAGES_PER_CLASS * len(CLASS_NAMES)
    if num_images < minimum:
        raise ValueError(f"phantom needs at least {minimum} images, got {num_images}")
    shares = np.array(list(PAPER_CLASS_COUNTS.values()), dtype=float)
    exact = num_images * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    leftover = num_images - counts.sum()
    counts[np.argsort(counts - exact)[:leftover]] += 1
    for index in np.flatnonzero(counts < MIN_IMAGES_PER_CLASS):
        deficit = MIN_IMAGES_PER_CLASS - counts[index]
        counts[index] += deficit
        counts[np.argmax(counts)] -= deficit
    return counts


def make_phantom(num_images: int, image_size: int, seed: int) -> Dataset:
    """Generate the synthetic seven-class phantom.

    Args:
        num_images: Number of images (at least 42; the study default is 700).
        image_size: Side of the square uint8 images in pixels (at least 32; default study 96).
        seed: Seed; the same seed gives the same images, labels and patient ids.

    Returns:
        A :class:`Dataset` with ``synthetic=True`` and name ``"phantom"``.
    """
    if image_size < 32:
        raise ValueError(f"phantom image_size must be at least 32 pixels, got {image_size}")
    rng = np.random.default_rng(seed)
    counts = class_counts(num_images)
    grid = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    xs, ys = np.meshgrid(grid, grid)
    textures = _texture_bank(rng, image_size)
    images = np.empty((num_images, image_size, image_size), dtype=np.uint8)
    labels = np.empty(num_images, dtype=np.int64)
    patient_ids = []
    position = 0
    patient_number = 0
    for label, count in enumerate(counts):
        cap = min(IMAGES_PER_PATIENT[-1], max(1, count // 3))
        remaining = count
        while remaining > 0:
            per_patient = int(rng.choice(IMAGES_PER_PATIENT, p=IMAGES_PER_PATIENT_PROBS))
            per_patient = min(per_patient, cap, remaining)
            anatomy = _patient_anatomy(rng)
            patient_number += 1
            for _ in range(per_patient):
                pixels = _render(label, anatomy, xs, ys, textures, rng)
                images[position] = np.clip(pixels * 255.0, 0, 255).astype(np.uint8)
                labels[position] = label
                patient_ids.append(f"phantom-p{patient_number:05d}")
                position += 1
            remaining -= per_patient
    order = rng.permutation(num_images)
    return Dataset(
        name="phantom",
        images=images[order],
        labels=labels[order],
        class_names=list(CLASS_NAMES),
        patient_ids=np.asarray(patient_ids)[order],
        official_split=None,
        synthetic=True,
    )


def _texture_bank(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smoothed noise fields reused as lung markings (filtering per image would be slow)."""
    noise = rng.standard_normal((TEXTURE_BANK_SIZE, size, size)).astype(np.float32)
    sigma = max(0.8, size / 80.0)
    fields = np.stack([gaussian_filter(field, sigma) for field in noise])
    return fields / fields.std(axis=(1, 2), keepdims=True)


def _patient_anatomy(rng: np.random.Generator) -> dict[str, float]:
    """Shape parameters shared by all images of one synthetic patient."""
    return {
        "lung_offset": rng.uniform(0.34, 0.40),
        "lung_width": rng.uniform(0.25, 0.30),
        "lung_height": rng.uniform(0.52, 0.60),
        "diaphragm": rng.uniform(0.42, 0.52),
        "heart_radius": rng.uniform(0.24, 0.3),
        "rib_spacing": rng.uniform(0.13, 0.17),
        "rib_phase": rng.uniform(0.0, 1.0),
        "side": float(rng.choice([-1.0, 1.0])),
        "severity": rng.uniform(0.65, 1.0),
    }


def _soft(values: np.ndarray, sharpness: float = 25.0) -> np.ndarray:
    """A smooth step from 0 (values < 0) to 1 (values > 0)."""
    return 0.5 + 0.5 * np.tanh(sharpness * values)


def _blob(xs: np.ndarray, ys: np.ndarray, x0: float, y0: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((xs - x0) / sx) ** 2 + ((ys - y0) / sy) ** 2))


def _render(
    label: int,
    anatomy: dict[str, float],
    xs: np.ndarray,
    ys: np.ndarray,
    textures: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One image in [0, 1] of class ``label`` for a patient's ``anatomy``."""
    name = CLASS_NAMES[label]
    side = anatomy["side"]
    severity = anatomy["severity"] * rng.uniform(0.85, 1.0)
    xs = xs - rng.uniform(-0.03, 0.03)
    ys = ys - rng.uniform(-0.03, 0.03)
    lung_y = -0.05
    diaphragm = {-1.0: anatomy["diaphragm"], 1.0: anatomy["diaphragm"]}
    heart_x, heart_radius = 0.1, anatomy["heart_radius"]
    if name == "Atelectasis":  # volume loss pulls the diaphragm up and the heart across
        diaphragm[side] -= 0.1 * severity
        heart_x += 0.06 * side * severity
    if name == "Pulmonary Edema":
        heart_radius *= 1.15

    body = _soft(1.0 - (xs / 0.9) ** 2 - (ys / 1.15) ** 2, 6.0)
    image = 0.06 + 0.5 * body
    lungs, coords = {}, {}
    for lung_side in (-1.0, 1.0):
        centre = lung_side * anatomy["lung_offset"]
        across = (xs - centre) / anatomy["lung_width"]
        down = (ys - lung_y) / anatomy["lung_height"]
        floor = diaphragm[lung_side] + 0.12 * across**2
        lungs[lung_side] = _soft(1.0 - across**2 - down**2, 8.0) * _soft(floor - ys, 30.0)
        coords[lung_side] = (across * lung_side, down)  # across > 0 points laterally
    lung_mask = lungs[-1.0] + lungs[1.0]

    markings_visible = np.ones_like(xs)
    opacity = np.zeros_like(xs)
    if name == "Pneumonia":
        lateral, down = coords[side]
        if rng.random() < 0.6:  # lower lobe behind an oblique fissure
            lobe = _soft(down - 0.1 - 0.35 * lateral + rng.uniform(-0.1, 0.1), 20.0)
        else:
            lobe = _soft(-0.15 - down + rng.uniform(-0.1, 0.1), 20.0)
        # Consolidation is patchy (air bronchograms), unlike the homogeneous fluid of effusion.
        patchy = 0.75 + 0.25 * np.tanh(textures[int(rng.integers(len(textures)))])
        opacity += 0.36 * severity * lobe * patchy * lungs[side]
        markings_visible *= 1.0 - 0.6 * lobe * lungs[side]
    elif name == "COVID-19":
        for lung_side in (-1.0, 1.0):
            centre = lung_side * anatomy["lung_offset"]
            for _ in range(int(rng.integers(2, 4))):
                x0 = centre + lung_side * anatomy["lung_width"] * rng.uniform(0.55, 0.85)
                y0 = lung_y + anatomy["lung_height"] * rng.uniform(0.0, 0.6)
                size = rng.uniform(0.1, 0.16)
                opacity += 0.17 * severity * _blob(xs, ys, x0, y0, size, size * 1.3)
        opacity *= lung_mask
    elif name == "Tuberculosis":
        for _ in range(int(rng.integers(4, 9))):
            lung_side = side if rng.random() < 0.7 else -side
            centre = lung_side * anatomy["lung_offset"]
            x0 = centre + anatomy["lung_width"] * rng.uniform(-0.6, 0.6)
            y0 = lung_y - anatomy["lung_height"] * rng.uniform(0.3, 0.75)
            size = rng.uniform(0.025, 0.045)
            opacity += 0.4 * severity * _blob(xs, ys, x0, y0, size, size)
        opacity *= lung_mask
    elif name == "Pleural Effusion":
        lateral, _ = coords[side]
        level = diaphragm[side] - rng.uniform(0.18, 0.38) * severity
        fluid = _soft(ys - level + 0.3 * np.clip(lateral, 0.0, None), 30.0)
        opacity += 0.45 * fluid * lungs[side]
        markings_visible *= 1.0 - fluid * lungs[side]
    elif name == "Pneumothorax":
        lateral, down = coords[side]
        radius = np.sqrt(lateral**2 + down**2)
        edge = rng.uniform(0.55, 0.8)
        outside = _soft(radius - edge, 40.0) * _soft(lateral, 20.0) * lungs[side]
        line_width = 0.02 + 1.5 / xs.shape[0]
        line = np.exp(-(((radius - edge) / line_width) ** 2)) * _soft(lateral, 20.0)
        opacity += 0.2 * severity * line * lungs[side] - 0.08 * outside
        markings_visible *= 1.0 - outside
    elif name == "Pulmonary Edema":
        for lung_side in (-1.0, 1.0):
            haze = _blob(xs, ys, lung_side * 0.2, lung_y + 0.05, 0.2, 0.28)
            opacity += 0.26 * severity * haze * lungs[lung_side]
    elif name == "Atelectasis":
        lateral, down = coords[side]
        slope, offset = rng.uniform(-0.35, 0.1), rng.uniform(0.25, 0.5)
        band = np.exp(-(((down - offset - slope * lateral) / 0.07) ** 2))
        opacity += 0.38 * severity * band * lungs[side]

    image = image - 0.32 * lung_mask
    heart_shape = ((xs - heart_x) / heart_radius) ** 2 + ((ys - 0.25) / (heart_radius * 0.8)) ** 2
    heart = _soft(1.0 - heart_shape, 6.0)
    mediastinum = _soft(0.1 - np.abs(xs - 0.02), 30.0) * _soft(0.3 - ys, 10.0)
    image = image + 0.3 * heart + 0.2 * mediastinum * (1.0 - heart)
    ribs = 0.5 + 0.5 * np.cos(
        2 * np.pi * ((ys - 0.25 * np.abs(xs)) / anatomy["rib_spacing"] + anatomy["rib_phase"])
    )
    image = image + 0.06 * ribs**4 * body
    texture = textures[int(rng.integers(len(textures)))]
    if rng.random() < 0.5:
        texture = texture[:, ::-1]
    hilum_distance = np.minimum(np.hypot(xs + 0.17, ys - lung_y), np.hypot(xs - 0.17, ys - lung_y))
    strength = 0.02 + 0.05 * np.exp(-hilum_distance / 0.35)
    image = image + strength * texture * lung_mask * markings_visible + opacity
    gain = rng.uniform(0.9, 1.1)
    noise = rng.normal(0.0, rng.uniform(0.01, 0.03), size=xs.shape).astype(np.float32)
    return gain * image + noise

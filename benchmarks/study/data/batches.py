"""Training and evaluation batches shared by the Keras and PyTorch study runners.

Batches are produced here as float32 ``(B, H, W, 3)`` arrays in 0..255 so that
both frameworks see exactly the same images, sampling and augmentation; each
runner only applies its backbone's preprocessing and trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.study.data.augment import augment_minority
from benchmarks.study.data.balance import (
    DEFAULT_BALANCE,
    DEFAULT_VAL_LOSS,
    VAL_LOSS_MODES,
    balance_plan,
    minority_mask,
    stratified_epoch,
    validation_loss,
)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images to ``size`` x ``size`` (bilinear), keeping grayscale/RGB.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, 3)``.
        size: Target side in pixels.
    """
    if images.shape[1] == size and images.shape[2] == size:
        return images
    resized = [
        np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for image in images
    ]
    return np.stack(resized).astype(np.uint8)


def to_rgb_float(images: np.ndarray) -> np.ndarray:
    """uint8 grayscale or RGB images -> float32 ``(N, H, W, 3)`` in 0..255 (grey replicated)."""
    batch = images.astype(np.float32)
    if batch.ndim == 3:
        batch = np.repeat(batch[..., None], 3, axis=-1)
    return batch


@dataclass
class SplitArrays:
    """Images resized to the study size and labels of one split."""

    images: np.ndarray
    labels: np.ndarray


class TrainingData:
    """Sampled, weighted, minority-augmented training batches and plain evaluation batches.

    Args:
        train: Training split.
        val: Validation split.
        test: Test split.
        num_classes: Number of classes ``C``.
        batch_size: Mini-batch size.
        seed: Seeds the sampler and the augmentation.
        balance: How class imbalance is handled, one of
            :data:`benchmarks.study.data.balance.BALANCE_MODES`. Defaults to ``"tempered"``.
        augment: Augment the training images of the minority classes (Table 2). Defaults to
            ``True``; ``False`` trains on the images as they are.
        val_loss: How :meth:`validation_loss` averages, one of
            :data:`benchmarks.study.data.balance.VAL_LOSS_MODES`. Defaults to ``"balanced"``.
    """

    def __init__(
        self,
        train: SplitArrays,
        val: SplitArrays,
        test: SplitArrays,
        num_classes: int,
        batch_size: int,
        seed: int,
        balance: str = DEFAULT_BALANCE,
        augment: bool = True,
        val_loss: str = DEFAULT_VAL_LOSS,
    ) -> None:
        if val_loss not in VAL_LOSS_MODES:
            raise ValueError(f"val_loss must be one of {VAL_LOSS_MODES}, got {val_loss!r}")
        self.train, self.val, self.test = train, val, test
        self.val_loss_mode = val_loss
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        # from the training labels only, so val/test never leak in
        self.plan = balance_plan(balance, train.labels, num_classes)
        self.class_weights = self.plan.weights
        self.minority = minority_mask(train.labels, num_classes)
        self.augment = augment

    def reseed(self, seed: int) -> None:
        """Restart the sampler and augmentation stream, so each run draws what it would alone."""
        self.rng = np.random.default_rng(seed)

    def epoch_plan(self) -> list[np.ndarray]:
        """Index arrays of one epoch's training batches (stratified when the plan samples)."""
        count = len(self.train.labels)
        if self.plan.shares is None:
            order = self.rng.permutation(count)
        else:
            order = stratified_epoch(self.train.labels, self.plan.shares, count, self.rng)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def augmented(self, labels: np.ndarray) -> np.ndarray:
        """Which training samples of these labels :meth:`train_batch` augments (bool per sample);
        the others reach the model exactly as stored, every epoch."""
        labels = np.asarray(labels)
        if not self.augment:
            return np.zeros(labels.shape, dtype=bool)
        return self.minority[labels]

    def train_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images (augmented where :meth:`augmented`), labels and the plan's per-sample loss
        weights."""
        labels = self.train.labels[indices]
        images = to_rgb_float(self.train.images[indices])
        if self.augment:
            images = augment_minority(images, labels, self.minority, self.rng)
        return images, labels, self.class_weights[labels]

    def plain_train_images(self, indices: np.ndarray) -> np.ndarray:
        """Training images as stored (never augmented), float32 ``(B, H, W, 3)`` in 0..255."""
        return to_rgb_float(self.train.images[indices])

    def validation_loss(self, losses: np.ndarray) -> float:
        """The monitored loss of the validation split from its per-sample losses, in order."""
        return validation_loss(losses, self.val.labels, self.num_classes, self.val_loss_mode)

    def eval_batches(self, split: SplitArrays) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Un-augmented batches of ``split`` in order."""
        for start in range(0, len(split.labels), self.batch_size):
            stop = start + self.batch_size
            yield to_rgb_float(split.images[start:stop]), split.labels[start:stop]


def make_training_data(
    images: np.ndarray,
    labels: np.ndarray,
    split: Any,
    image_size: int,
    num_classes: int,
    batch_size: int,
    seed: int,
    balance: str = DEFAULT_BALANCE,
    augment: bool = True,
    val_loss: str = DEFAULT_VAL_LOSS,
) -> TrainingData:
    """Cut ``images``/``labels`` by a ``benchmarks.study.data.splits.Split`` and resize every split.

    Args:
        images: uint8 images of the whole data set.
        labels: int labels of the whole data set.
        split: Object with ``train``/``val``/``test`` index arrays.
        image_size: Side the backbone receives.
        num_classes: Number of classes.
        batch_size: Mini-batch size.
        seed: Seeds sampling and augmentation.
        balance: See :class:`TrainingData`. Defaults to ``"tempered"``.
        augment: See :class:`TrainingData`. Defaults to ``True``.
        val_loss: See :class:`TrainingData`. Defaults to ``"balanced"``.
    """

    def part(indices: np.ndarray) -> SplitArrays:
        return SplitArrays(resize_images(images[indices], image_size), labels[indices])

    return TrainingData(
        part(split.train),
        part(split.val),
        part(split.test),
        num_classes,
        batch_size,
        seed,
        balance,
        augment,
        val_loss,
    )

"""Framework-free glue shared by the Keras and PyTorch study runners.

Batches are produced here as float32 ``(B, H, W, 3)`` arrays in 0..255 so that
both frameworks see exactly the same images, sampling and augmentation; each
runner only applies its backbone's preprocessing and trains.
"""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .augment import augment_minority
from .balance import balanced_indices, class_weights, minority_mask
from .presets import BALANCE_MODES

LOAD_REPEATS = 3


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
    """Class-balanced, minority-augmented training batches and plain evaluation batches.

    Args:
        train: Training split.
        val: Validation split.
        test: Test split.
        num_classes: Number of classes ``C``.
        batch_size: Mini-batch size.
        seed: Seeds the sampler and the augmentation.
        balance: ``"both"`` (the paper: Eq. 14 class-weighted loss on
            class-balanced batches drawn with replacement), ``"weights"`` (the
            loss weights over shuffled epochs) or ``"sampler"`` (balanced
            batches, unweighted loss). Defaults to ``"both"``.
    """

    def __init__(
        self,
        train: SplitArrays,
        val: SplitArrays,
        test: SplitArrays,
        num_classes: int,
        batch_size: int,
        seed: int,
        balance: str = "both",
    ) -> None:
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
        self.train, self.val, self.test = train, val, test
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.balance = balance
        self.rng = np.random.default_rng(seed)
        # Eq. 14 weights from the training labels only, so val/test never leak in
        weights = class_weights(train.labels, num_classes).astype(np.float32)
        self.class_weights = weights if balance != "sampler" else np.ones_like(weights)
        self.minority = minority_mask(train.labels, num_classes)

    def epoch_plan(self) -> list[np.ndarray]:
        """Index arrays of one epoch's training batches (class-balanced when sampling)."""
        count = len(self.train.labels)
        if self.balance == "weights":
            order = self.rng.permutation(count)
        else:
            order = balanced_indices(self.train.labels, count, self.rng)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def train_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images (augmented where minority), labels and loss weights (Eq. 14, or ones)."""
        labels = self.train.labels[indices]
        images = augment_minority(
            to_rgb_float(self.train.images[indices]), labels, self.minority, self.rng
        )
        return images, labels, self.class_weights[labels]

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
    balance: str = "both",
) -> TrainingData:
    """Cut ``images``/``labels`` by a ``benchmarks.splits.Split`` and resize every split.

    Args:
        images: uint8 images of the whole data set.
        labels: int labels of the whole data set.
        split: Object with ``train``/``val``/``test`` index arrays.
        image_size: Side the backbone receives.
        num_classes: Number of classes.
        batch_size: Mini-batch size.
        seed: Seeds sampling and augmentation.
        balance: See :class:`TrainingData`. Defaults to ``"both"``.
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
    )


def unfreeze_events(history: list[Any], lr0: float) -> list[dict[str, Any]]:
    """Run-dict entries of the unfreezes in a scheduler's ``history`` of ``Decision``s.

    Each entry's ``lr`` is the rate after that unfreeze's decay, replayed from
    ``lr0`` with the decisions' ``lr_factor``s: the adapters apply exactly these
    factors, and the Keras callback swaps its optimizer, so no optimizer holds
    the whole story.
    """
    events, lr = [], lr0
    for decision in history:
        lr *= decision.lr_factor
        if decision.unfroze:
            events.append(
                {
                    "epoch": decision.epoch,
                    "groups": list(decision.newly_unfrozen),
                    "num_unfrozen": decision.num_unfrozen,
                    "lr": lr,
                }
            )
    return events


def timeline_entry(
    epoch: int, train_loss: float, val_loss: float, lr: float, num_unfrozen: int
) -> dict[str, Any]:
    """One epoch of the run's training timeline (``lr``: the rate that epoch trained with)."""
    return {
        "epoch": epoch,
        "train_loss": float(train_loss),
        "val_loss": float(val_loss),
        "lr": float(lr),
        "num_unfrozen": int(num_unfrozen),
    }


@dataclass
class RunContext:
    """What one run needs besides its training data.

    Args:
        backbone: Backbone name.
        strategy: ``"traditional"`` or ``"dynamic"``.
        seed: Seed of the run (split, sampling, augmentation, head init).
        data_name: Name of the data source, as given to ``--data``.
        synthetic: Whether the data are synthetic.
        class_names: Class names in label order.
        image_size: Side of the input images.
        out_dir: Study output folder; models go to ``out_dir/models``.
    """

    backbone: str
    strategy: str
    seed: int
    data_name: str
    synthetic: bool
    class_names: list[str]
    image_size: int
    out_dir: Path

    @property
    def label(self) -> str:
        """``"resnet50 dynamic seed 0"``, for progress bars."""
        return f"{self.backbone} {self.strategy} seed {self.seed}"

    def model_path(self, framework: str, suffix: str) -> Path:
        """Where this run's model is saved (folder created)."""
        folder = self.out_dir / "models"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{framework}_{self.backbone}_{self.strategy}_seed{self.seed}{suffix}"


def run_record(
    ctx: RunContext,
    *,
    framework: str,
    weights: str,
    metrics: dict[str, Any],
    timeline: list[dict[str, Any]],
    best_epoch: int | None,
    wall_s: float,
    model_path: Path,
    load_s: float,
    top_n: int | None,
    num_groups: int | None,
    unfreeze_events: list[dict[str, Any]],
) -> dict[str, Any]:
    """The run dict consumed by ``benchmarks.report`` (keys fixed by the shared contract)."""
    return {
        "framework": framework,
        "backbone": ctx.backbone,
        "strategy": ctx.strategy,
        "seed": ctx.seed,
        "weights": weights,
        "data": ctx.data_name,
        "synthetic": ctx.synthetic,
        "image_size": ctx.image_size,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_class": metrics["per_class"],
        "confusion_normalized": metrics["confusion_normalized"],
        "class_names": list(ctx.class_names),
        "epochs": len(timeline),
        "best_epoch": best_epoch,
        "wall_s": wall_s,
        "size_mb": file_size_mb(model_path),
        "load_s": load_s,
        "top_n": top_n,
        "num_groups": num_groups,
        "unfreeze_events": unfreeze_events,
        "timeline": timeline,
        "model_path": str(model_path),
    }


def file_size_mb(path: Path) -> float:
    """Size on disk in MB (10**6 bytes) of a file or of every file below a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def median_load_seconds(load: Callable[[], object]) -> float:
    """Median wall time of ``LOAD_REPEATS`` calls of ``load`` (a full model load each).

    Args:
        load: Loads the saved model once.
    """
    times = []
    for _ in range(LOAD_REPEATS):
        start = time.perf_counter()
        load()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def environment(packages: list[str]) -> dict[str, Any]:
    """Python, platform and installed versions of ``packages`` (``None`` if absent)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "packages": versions,
    }

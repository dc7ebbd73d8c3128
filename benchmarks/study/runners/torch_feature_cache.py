"""The feature cache in the PyTorch study runner: the validation pass and the un-augmented
training samples served from ``dynft_torch.FeatureCache``.

Two caches follow the run's trainable set: one over the validation split (in the batches the
plain validation pass uses), one over the training samples that are never augmented (every
sample whose class ``TrainingData`` does not augment). At the start of each training epoch the
second one's features are gathered into one table by sample, so the epoch's shuffled batches
can take them in any order; the augmented samples of a batch take the frozen part in full
(``FeatureCache.features``), and the assembled batch runs through the trainable rest once, as
the plain batch would. The test split is scored once, after training, so it is never cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from benchmarks.study.data.batches import TrainingData, to_rgb_float
from benchmarks.study.runners.feature_cache_runs import (
    CacheFigures,
    padded_batches,
    split_limits,
    warn_uncacheable,
)

ToInput = Callable[[np.ndarray], torch.Tensor]


class _Batches:
    """Re-iterable ``(model input, sample positions)`` batches of chosen samples, in order.

    With ``pad`` the short last batch is padded (see ``padded_batches``).
    """

    def __init__(
        self,
        images_of: Callable[[np.ndarray], np.ndarray],
        positions: np.ndarray,
        batch_size: int,
        to_input: ToInput,
        pad: bool = False,
    ) -> None:
        self.images_of, self.positions = images_of, positions
        self.batch_size, self.to_input, self.pad = batch_size, to_input, pad

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for loaded, marked in padded_batches(self.positions, self.batch_size, self.pad):
            yield self.to_input(self.images_of(loaded)), torch.from_numpy(marked)


@dataclass
class _Table:
    rows: torch.Tensor  # features of the served training samples
    row_of: np.ndarray  # training position -> row (-1: not served)


def fixed_depth_tuner(
    model: torch.nn.Module, backbone: torch.nn.Module, layers: Any, depth: int
) -> SimpleNamespace:
    """What ``FeatureCache`` reads of a tuner, for a strategy that trains the top ``depth``
    layers from the start: the model, its layer groups and a constant ``num_unfrozen``."""
    from dynft_torch import resolve_groups

    groups = resolve_groups(model, backbone, layers)
    return SimpleNamespace(
        model=model, groups=groups, scheduler=SimpleNamespace(num_unfrozen=depth)
    )


class TorchStudyCache:
    """The run's caches and the two passes they serve.

    Args:
        tuner: The ``DynamicFineTuner`` (or :func:`fixed_depth_tuner`).
        data: The run's batches.
        to_input: Images (float32 ``(B, H, W, 3)``) -> preprocessed model input on the device.
        max_gb: ``--feature-cache-max-gb`` (``None``: the default), shared by the two caches.
    """

    def __init__(
        self, tuner: Any, data: TrainingData, to_input: ToInput, max_gb: float | None
    ) -> None:
        from dynft_torch import FeatureCache

        self.data, self.to_input = data, to_input
        served = np.flatnonzero(~data.augmented(data.train.labels))
        # the training features are gathered into a table every epoch: a second copy
        limits = split_limits(
            max_gb, {"validation": len(data.val.labels), "training": 2 * len(served)}
        )
        val = data.val

        def val_images(positions: np.ndarray) -> np.ndarray:
            return to_rgb_float(val.images[positions])

        every = np.arange(len(val.labels))
        self.validation = FeatureCache(
            tuner,
            _Batches(val_images, every, data.batch_size, to_input),
            max_bytes=limits["validation"],
        )
        self.training = None
        if len(served):
            self.training = FeatureCache(
                tuner,
                _Batches(data.plain_train_images, served, data.batch_size, to_input, pad=True),
                max_bytes=limits["training"],
            )
        self._served = len(served)
        self.figures = CacheFigures("auto")
        self._table: _Table | None = None

    @classmethod
    def open(
        cls, tuner: Any, data: TrainingData, to_input: ToInput, max_gb: float | None
    ) -> TorchStudyCache | None:
        """The caches of a run, ``None`` (with one warning) when the model cannot be cut."""
        from dynft_torch.frozen_region import CutError

        try:
            return cls(tuner, data, to_input, max_gb)
        except CutError as error:
            warn_uncacheable(error)
            return None

    def validation_logits(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """``(logits, labels)`` of every validation batch, in the plain pass's order."""
        cache = self.validation
        for features, positions in cache.batches():
            yield cache.model(features), self.data.val.labels[positions.cpu().numpy()]

    def begin_epoch(self) -> None:
        """Gather this trainable set's training features (before the epoch's first batch)."""
        self._table = None  # the stored features and one table, never two
        self._table = self._gather()

    def _gather(self) -> _Table | None:
        cache = self.training
        if cache is None or cache.cut is None:
            return None
        rows: torch.Tensor | None = None
        row_of = np.full(len(self.data.train.labels), -1)
        filled = 0
        for features, positions in cache.batches():
            if cache.stats.fallback is not None:  # over its limit: this epoch runs in full
                return None
            if rows is None:
                rows = features.new_empty((self._served, *features.shape[1:]))
            positions = positions.cpu()
            real = positions.numpy() >= 0
            count = int(real.sum())
            rows[filled : filled + count] = features[torch.from_numpy(real)]
            row_of[positions.numpy()[real]] = np.arange(filled, filled + count)
            filled += count
        assert rows is not None
        return _Table(rows, row_of)

    def training_logits(
        self, model: torch.nn.Module, indices: np.ndarray, labels: np.ndarray, images: np.ndarray
    ) -> torch.Tensor:
        """The logits of one training batch: served rows from the table, augmented rows
        through the frozen part, then the trainable rest once for the whole batch.

        A short batch (the epoch's last) runs in full: its plain features come from kernels
        chosen for its own size. Augmented rows are computed in a batch of their own count,
        which may round differently from the plain batch (see docs/study.md).
        """
        table, cache = self._table, self.training
        if table is None or cache is None or len(indices) != self.data.batch_size:
            return model(self.to_input(images))
        augmented = self.data.augmented(labels)
        rows = table.rows.new_empty((len(indices), *table.rows.shape[1:]))
        served = torch.from_numpy(np.flatnonzero(~augmented))
        rows[served] = table.rows[torch.from_numpy(table.row_of[indices[~augmented]])]
        if augmented.any():
            fresh = torch.from_numpy(np.flatnonzero(augmented))
            rows[fresh] = cache.features(self.to_input(images[augmented]))
        return cache.model(rows)

    def observe(self) -> None:
        """Record the caches' figures (after every epoch)."""
        caches = {"validation": self.validation.stats}
        if self.training is not None:
            caches["training"] = self.training.stats
        self.figures.observe(caches)

    def close(self) -> None:
        """Free the features and release the model from the caches' hooks."""
        self._table = None
        self.validation.close()
        if self.training is not None:
            self.training.close()

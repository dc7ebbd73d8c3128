"""Training batches served as features in the Keras runner, for the strategies whose cut is fixed.

``linear_probe`` and ``traditional`` train the same top layers for the whole run, so the frozen
part below them never changes and the cut never moves. For them ``fit`` trains the cache's rest
model (it shares every weight with the whole model) on :class:`ServedTrainBatches`: the
features of the never-augmented training samples, computed once and gathered into one table by
sample every epoch (as the PyTorch runner does), and for augmented samples the frozen part
computed on the augmented images. The staged strategies move the cut at every unfreeze, inside
one ``fit``: its input signature is fixed when it starts (on TensorFlow), and its data pipeline
prepares the next epoch's first batches before the epoch-end callbacks decide to unfreeze (on
JAX), so features made in the pipeline could belong to the previous cut. They are served the
validation pass only (:class:`~benchmarks.study.runners.keras_feature_cache.EpochValidation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import numpy as np

from benchmarks.study.data.batches import TrainingData
from benchmarks.study.runners.feature_cache_runs import padded_batches, split_limits

Preprocess = Callable[[np.ndarray], np.ndarray]


class _PlainTrainingBatches:
    """Re-iterable ``(preprocessed images, sample positions)`` of the never-augmented training
    samples, in order, the last batch padded (:func:`padded_batches`)."""

    def __init__(self, data: TrainingData, preprocess: Preprocess, positions: np.ndarray) -> None:
        self.data, self.preprocess, self.positions = data, preprocess, positions

    def __len__(self) -> int:
        return -(-len(self.positions) // self.data.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for loaded, marked in padded_batches(self.positions, self.data.batch_size):
            yield self.preprocess(self.data.plain_train_images(loaded)), marked


@dataclass
class _Table:
    rows: np.ndarray  # features of the never-augmented training samples
    row_of: np.ndarray  # training position -> row (-1: not in the table)


def plain_training_batches(data: TrainingData, preprocess: Preprocess) -> _PlainTrainingBatches:
    """The never-augmented training samples, for a ``dynft_keras.FeatureCache``."""
    return _PlainTrainingBatches(
        data, preprocess, np.flatnonzero(~data.augmented(data.train.labels))
    )


class ServedTrainBatches(keras.utils.PyDataset):
    """The epoch's training batches as ``(features at the cut, labels, sample weights)``.

    The same sampler, augmentation and weights as ``TrainBatches`` (``TrainingData`` is drawn
    from in the same order), for the cache's :attr:`~dynft_keras.FeatureCache.model`. Served
    rows come from the table; augmented samples, the epoch's short last batch, and every batch
    when the features were over the memory limit take the frozen part computed now. The frozen
    part runs as its own function (``predict_on_batch`` of the prefix), the augmented rows in a
    batch of their own count: on a real backbone CPU kernels may round a sample differently
    from the plain run's training step (see docs/study.md, *Exactness*).

    Args:
        data: The run's batches.
        preprocess: The backbone's input preprocessing.
        cache: A ``dynft_keras.FeatureCache`` over :func:`plain_training_batches` whose cut does
            not move during the run.
    """

    def __init__(self, data: TrainingData, preprocess: Preprocess, cache: object) -> None:
        super().__init__()
        self.data, self.preprocess, self.cache = data, preprocess, cache
        self.cut = cache.cut
        if self.cut is None:
            raise ValueError("ServedTrainBatches needs a cache that cuts the model")
        self.plan = data.epoch_plan()
        self.table = self._gather()

    def _gather(self) -> _Table | None:
        if self.cache.stats.fallback is not None:  # over its limit: computed every batch
            return None
        rows: np.ndarray | None = None
        row_of = np.full(len(self.data.train.labels), -1)
        filled = 0
        for features, positions in self.cache.batches():
            if self.cache.stats.fallback is not None:  # over its limit: computed every batch
                return None
            if rows is None:
                count = len(self.cache.data.positions)
                rows = np.empty((count, *features.shape[1:]), features.dtype)
            real = positions >= 0
            kept = int(real.sum())
            rows[filled : filled + kept] = features[real]
            row_of[positions[real]] = np.arange(filled, filled + kept)
            filled += kept
        return None if rows is None else _Table(rows, row_of)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.cache.cut != self.cut:
            raise RuntimeError(
                f"the feature cache's cut moved from {self.cut!r} to {self.cache.cut!r} during "
                "fit; served training batches need a strategy whose trainable set is fixed"
            )
        indices = self.plan[index]
        images, labels, weights = self.data.train_batch(indices)
        inputs = self.preprocess(images)
        if self.table is None or len(indices) != self.data.batch_size:
            return self.cache.features(inputs), labels, weights
        augmented = self.data.augmented(labels)
        rows = np.empty((len(indices), *self.table.rows.shape[1:]), self.table.rows.dtype)
        rows[~augmented] = self.table.rows[self.table.row_of[indices[~augmented]]]
        if augmented.any():
            rows[augmented] = self.cache.features(inputs[augmented])
        return rows, labels, weights

    def on_epoch_end(self) -> None:
        self.plan = self.data.epoch_plan()
        self.table = None  # the stored features and one table, never two
        self.table = self._gather()


def cache_limits(data: TrainingData, max_gb: float | None, training_served: bool) -> dict[str, int]:
    """The byte limits of a run's caches: ``--feature-cache-max-gb`` (default: half the memory
    available now) shared by image count; resolve them before building any cache."""
    images = {"validation": len(data.val.labels)}
    if training_served:  # the training features are gathered into a table: a second copy
        images["training"] = 2 * int(np.sum(~data.augmented(data.train.labels)))
    return split_limits(max_gb, images)


def open_served_training(
    model: keras.Model,
    tuner: object,
    data: TrainingData,
    preprocess: Preprocess,
    max_bytes: int,
) -> ServedTrainBatches | None:
    """Served training batches for a run whose cut is fixed; ``None`` when every training
    sample is augmented, or when the model cannot be cut (the validation cache, which meets the
    same cut, says so): the run then trains on the images.

    Args:
        model: The whole model.
        tuner: What the cache reads of the fixed trainable set (``fixed_depth_callback``).
        data: The run's batches.
        preprocess: The backbone's input preprocessing.
        max_bytes: Memory limit of the training features (their share, see
            :func:`cache_limits`).
    """
    from dynft_keras import FeatureCache
    from dynft_keras.frozen_prefix import CutError

    batches = plain_training_batches(data, preprocess)
    if not len(batches.positions):
        return None
    try:
        cache = FeatureCache(tuner, batches, model=model, max_bytes=max_bytes)
    except CutError:
        return None
    if cache.cut is None:
        cache.close()
        return None
    return ServedTrainBatches(data, preprocess, cache)

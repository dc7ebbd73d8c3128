"""Training batches served as features in the Keras runner, for every strategy that freezes.

``fit`` trains a :class:`ServedModel` on :class:`ServedTrainBatches`. The batches carry the
labels, the sample weights and a *key* per batch; the features at the current cut wait in host
memory under that key, and the model's first step fetches them (a host callback: a
``tf.py_function``, a ``jax.pure_callback``, a plain call on torch) and applies the rest of the
model after the cut. Keys have one shape whatever the cut, so ``fit``'s data pipeline never
sees the features change shape when an unfreeze moves the cut (its input signature is fixed
when it starts, on TensorFlow), and the model traces its step anew after every unfreeze
(``DynamicFineTuning`` rebuilds the step functions), picking up the new cut's rest model.

Features come from one table per cut: the never-augmented training samples, computed once by
the cut's frozen part and gathered by sample every epoch, as the PyTorch runner does. Augmented
samples, the epoch's short last batch, and every batch when the features are over the memory
limit take the frozen part computed on the spot. Batches are prepared in the order ``fit``
asks for them, so the augmentation draws are the plain run's. A batch prepared before an
unfreeze and trained after it would meet the wrong rest model: it raises.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from benchmarks.study.data.batches import TrainingData
from benchmarks.study.runners.feature_cache_runs import padded_batches, split_limits

Preprocess = Callable[[np.ndarray], np.ndarray]
_UNBUILT = object()


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
    """The epoch's training batches as ``(keys, labels, sample weights)``.

    The same sampler, augmentation and weights as ``TrainBatches`` (``TrainingData`` is drawn
    from in the same order); the features of a batch wait for :meth:`lookup` under its key.
    The frozen part runs as its own function (``predict_on_batch`` of the prefix), the
    augmented rows in a batch of their own count: on a real backbone CPU kernels may round a
    sample differently from the plain run's training step (see docs/study.md, *Exactness*).

    Args:
        data: The run's batches.
        preprocess: The backbone's input preprocessing.
        cache: A ``dynft_keras.FeatureCache`` over :func:`plain_training_batches`.
    """

    def __init__(self, data: TrainingData, preprocess: Preprocess, cache: Any) -> None:
        super().__init__()
        self.data, self.preprocess, self.cache = data, preprocess, cache
        self.plan = data.epoch_plan()
        self.table: _Table | None = None
        self._table_cut: object = _UNBUILT
        self._keys = itertools.count()
        self._prepared: dict[int, tuple[str | None, np.ndarray]] = {}
        self._last: tuple[int, np.ndarray] | None = None

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

    def _table_for(self, cut: str | None) -> _Table | None:
        if cut != self._table_cut:
            self.table = None  # the stored features and one table, never two
            self.table = self._gather() if cut is not None else None
            self._table_cut = cut
        return self.table

    def features(self, indices: np.ndarray, labels: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """The features at the current cut of one batch (the inputs when nothing is cut)."""
        table = self._table_for(self.cache.cut)
        if table is None or len(indices) != self.data.batch_size:
            return self.cache.features(inputs)
        augmented = self.data.augmented(labels)
        rows = np.empty((len(indices), *table.rows.shape[1:]), table.rows.dtype)
        rows[~augmented] = table.rows[table.row_of[indices[~augmented]]]
        if augmented.any():
            rows[augmented] = self.cache.features(inputs[augmented])
        return rows

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = self.plan[index]
        images, labels, weights = self.data.train_batch(indices)
        key = next(self._keys)
        cut = self.cache.cut
        self._prepared[key] = (cut, self.features(indices, labels, self.preprocess(images)))
        return np.full(len(indices), key, np.int32), labels, weights

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The features of the batch of ``keys``, checked against the current cut.

        Raises:
            RuntimeError: The batch was prepared before the cut moved.
        """
        key = int(keys[0])
        if self._last is not None and self._last[0] == key:  # a callback may run twice
            return self._last[1]
        for earlier in [k for k in self._prepared if k < key]:
            del self._prepared[earlier]  # prepared by fit to learn its input shapes, not trained
        cut, features = self._prepared.pop(key)
        if cut != self.cache.cut:
            raise RuntimeError(
                f"a training batch was prepared at the cut {cut!r} and trained after the "
                f"trainable set moved the cut to {self.cache.cut!r}; the data pipeline read "
                "ahead across an epoch end, which this runner does not support"
            )
        self._last = (key, features)
        return features

    def on_epoch_end(self) -> None:
        self.plan = self.data.epoch_plan()
        self.table, self._table_cut = None, _UNBUILT  # gathered again: served, every epoch


def _host_lookup(lookup: Callable[[np.ndarray], np.ndarray], keys: Any, shape: tuple) -> Any:
    """``lookup(keys)`` run on the host inside the backend's compiled step, of static shape."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        features = tf.py_function(lambda k: lookup(k.numpy()), [keys], tf.float32)
        # declared in the graph, not only on the Python tensor: with the shape unknown to the
        # graph optimiser, oneDNN rounded the rest model differently from the plain step
        return tf.ensure_shape(features, (keys.shape[0], *shape))
    if backend == "jax":
        import jax

        result = jax.ShapeDtypeStruct((keys.shape[0], *shape), np.float32)
        return jax.pure_callback(lambda k: lookup(np.asarray(k)), result, keys)
    if getattr(keys, "is_meta", False):  # torch: fit learning the output shapes, no data
        return keras.ops.zeros((keys.shape[0], *shape))
    return keras.ops.convert_to_tensor(lookup(keras.ops.convert_to_numpy(keys)))


class ServedModel(keras.Model):
    """What ``fit`` trains on :class:`ServedTrainBatches`: keys in, the model's outputs out.

    Its variables are those of the cache's current rest model, so the frozen part below the
    cut is not in the training state at all (on JAX the fitted model's variables are handed
    to the step function and detached from the variables during the epoch; the frozen part
    must stay readable, it computes features meanwhile). The whole model is a layer of it, so
    ``DynamicFineTuning`` finds its backbone and trainable flags here.

    Args:
        whole: The whole model; every weight this model trains is one of its weights.
        batches: The served batches whose :meth:`~ServedTrainBatches.lookup` it calls.
    """

    def __init__(self, whole: keras.Model, batches: ServedTrainBatches) -> None:
        super().__init__(name=f"{whole.name}_on_features")
        self.whole = whole
        self._batches = batches
        self._rest_model = batches.cache.model
        self.built = True

    def compile(self, *args: Any, **kwargs: Any) -> None:
        if keras.backend.backend() == "tensorflow":  # XLA cannot compile a tf.py_function
            kwargs["jit_compile"] = False
        super().compile(*args, **kwargs)

    def _rest(self) -> keras.Model:
        cache = self._batches.cache
        if not cache.closed:  # closed when training ends: its rest model stays this model's
            self._rest_model = cache.model
        return self._rest_model

    @property
    def variables(self) -> list[keras.Variable]:
        return list(self._rest().variables)

    @property
    def weights(self) -> list[keras.Variable]:
        return list(self._rest().weights)

    def get_weights(self) -> list[np.ndarray]:
        return self._rest().get_weights()

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self._rest().set_weights(weights)

    def call(self, keys: Any, training: bool | None = None) -> Any:
        rest = self._rest()
        shape = tuple(rest.inputs[0].shape[1:])
        return rest(_host_lookup(self._batches.lookup, keys, shape), training=training)

    def compute_output_spec(self, keys: Any, training: bool | None = None) -> keras.KerasTensor:
        output = self.whole.outputs[0]
        return keras.KerasTensor((keys.shape[0], *output.shape[1:]), output.dtype)


def cache_limits(data: TrainingData, max_gb: float | None, training_served: bool) -> dict[str, int]:
    """The byte limits of a run's caches: ``--feature-cache-max-gb`` (default: half the memory
    available now) shared by image count; resolve them before building any cache."""
    images = {"validation": len(data.val.labels)}
    if training_served:  # the training features are gathered into a table: a second copy
        images["training"] = 2 * int(np.sum(~data.augmented(data.train.labels)))
    return split_limits(max_gb, images)


def open_served_training(
    model: keras.Model,
    tuner: Any,
    data: TrainingData,
    preprocess: Preprocess,
    max_bytes: int,
) -> ServedTrainBatches | None:
    """Served training batches for a run; ``None`` when every training sample is augmented,
    or when the model cannot be cut (the validation cache, which meets the same cut, says
    so): the run then trains on the images.

    Args:
        model: The whole model.
        tuner: The ``DynamicFineTuning`` callback or ``fixed_depth_callback``: the cache
            follows its trainable set.
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

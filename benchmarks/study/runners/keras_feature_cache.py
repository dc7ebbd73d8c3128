"""The Keras runner's validation pass, served from ``dynft_keras.FeatureCache`` when enabled.

``fit`` would validate the whole model on images every epoch; instead :class:`EpochValidation`
(first of the callbacks) puts the validation loss into the epoch's logs, where the fixed-depth
stopping, the timeline and ``DynamicFineTuning`` read it. With ``--feature-cache auto`` it
applies the rest of the model to the features of the frozen part, computed once per trainable
set; with ``off`` it predicts on the images. Both compute the loss with :func:`validation_loss`,
so the two settings decide alike. Training batches are served by
``benchmarks.study.runners.keras_training_cache``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import keras
import numpy as np

from benchmarks.study.data.batches import TrainingData
from benchmarks.study.runners.feature_cache_runs import CacheFigures, warn_uncacheable
from benchmarks.study.runners.keras_batches import EvalBatches


def validation_loss(probabilities: np.ndarray, data: TrainingData) -> float:
    """The monitored validation loss (``TrainingData.validation_loss``) of the validation
    split's predicted probabilities: sparse categorical cross-entropy, clipped like Keras'."""
    labels = data.val.labels
    picked = probabilities[np.arange(len(labels)), labels]
    return data.validation_loss(-np.log(np.clip(picked, keras.config.epsilon(), 1.0)))


def fixed_depth_callback(base: keras.Model, depth: int) -> SimpleNamespace:
    """What ``FeatureCache`` reads of the callback, for a strategy that trains the top
    ``depth`` layers of ``base`` from the start (one group per layer)."""
    from dynft_keras.backbone import as_backbone

    return SimpleNamespace(
        backbone=as_backbone(base),
        groups=[[layer] for layer in base.layers],
        scheduler=SimpleNamespace(num_unfrozen=depth),
    )


class EpochValidation(keras.callbacks.Callback):
    """Sets ``logs["val_loss"]`` at the end of every epoch, through the cache or not.

    Args:
        model: The whole model (in a run with served training batches, ``fit`` trains its
            rest model, which shares its weights).
        val: The validation batches.
        data: The run's batches (the validation labels and loss mode are read).
        mode: ``"auto"`` (serve the frozen part from a cache) or ``"off"``.
        tuner: The ``DynamicFineTuning`` callback or :func:`fixed_depth_callback`; the cache
            follows its trainable set.
        num_groups: Groups of ``tuner``.
        max_bytes: Memory limit of the validation features (its share of
            ``--feature-cache-max-gb``).
        others: Further caches of the run whose figures are recorded with the validation
            cache's after every epoch, and closed with it (by name, e.g. ``"training"``).
    """

    def __init__(
        self,
        model: keras.Model,
        val: EvalBatches,
        data: TrainingData,
        mode: str,
        tuner: Any,
        num_groups: int,
        max_bytes: int,
        others: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.full_model, self.val, self.data = model, val, data
        self.figures = CacheFigures(mode)
        self.cache = None
        self.others = dict(others or {})
        scheduler = getattr(tuner, "scheduler", None)
        always_trained = scheduler is not None and scheduler.num_unfrozen == num_groups
        if mode == "auto" and not always_trained:
            from dynft_keras import FeatureCache
            from dynft_keras.frozen_prefix import CutError

            try:
                self.cache = FeatureCache(tuner, val, model=model, max_bytes=max_bytes)
            except CutError as error:
                warn_uncacheable(error)

    def probabilities(self) -> np.ndarray:
        """The model's outputs on the validation split, in order."""
        if self.cache is not None:
            return self.cache.predict()
        batches = [self.full_model.predict_on_batch(self.val[i][0]) for i in range(len(self.val))]
        return np.concatenate([keras.ops.convert_to_numpy(b) for b in batches])

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            raise RuntimeError("EpochValidation needs the epoch logs to report val_loss in")
        logs["val_loss"] = validation_loss(self.probabilities(), self.data)
        caches = {name: cache.stats for name, cache in self.others.items()}
        if self.cache is not None:
            caches["validation"] = self.cache.stats
        if caches:
            self.figures.observe(caches)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for cache in [self.cache, *self.others.values()]:
            if cache is not None:
                cache.close()

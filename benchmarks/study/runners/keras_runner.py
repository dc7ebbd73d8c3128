"""One study run on Keras 3: traditional top-n fine-tuning or dynamic fine-tuning.

Both strategies use one ``model.fit`` with the same Adam optimizer, learning
rate, batches (``TrainingData``: the ``--balance`` mode's sampler and sample weights,
minority-only augmentation) and epoch budget. Traditional makes the
top-n layers of the base trainable from the start and stops early on the
validation loss with the best weights restored; dynamic adds
``dynft_keras.DynamicFineTuning``. The base is called with ``training=False``,
so BatchNorm runs in inference mode in both strategies.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from tqdm.auto import tqdm

from benchmarks.study.config import StudyConfig
from benchmarks.study.data.batches import SplitArrays, TrainingData
from benchmarks.study.models.keras_backbones import build_base, get_backbone
from benchmarks.study.results.metrics import classification_metrics
from benchmarks.study.runners.records import (
    RunContext,
    median_load_seconds,
    run_record,
    timeline_entry,
    unfreeze_events,
)
from dynft_core import PlateauMonitor

FRAMEWORK = "keras"
Preprocess = Callable[[np.ndarray], np.ndarray]


def configure(cfg: StudyConfig) -> None:
    """Process-wide framework settings, applied once before the first run."""
    if cfg.threads is not None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
            tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
        except RuntimeError:  # TensorFlow already ran an op in this process: keep its pools
            warnings.warn(
                f"threads={cfg.threads} ignored: TensorFlow was initialised before the study",
                RuntimeWarning,
                stacklevel=2,
            )


class TrainBatches(keras.utils.PyDataset):
    """One epoch of ``TrainingData`` batches: (preprocessed images, labels, sample weights)."""

    def __init__(self, data: TrainingData, preprocess: Preprocess) -> None:
        super().__init__()
        self.data, self.preprocess = data, preprocess
        self.plan = data.epoch_plan()

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, labels, weights = self.data.train_batch(self.plan[index])
        return self.preprocess(images), labels, weights

    def on_epoch_end(self) -> None:
        self.plan = self.data.epoch_plan()


class EvalBatches(keras.utils.PyDataset):
    """Un-augmented batches of one split, in order (validation loss is unweighted)."""

    def __init__(self, data: TrainingData, split: SplitArrays, preprocess: Preprocess) -> None:
        super().__init__()
        self.batches = list(data.eval_batches(split))
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.batches[index]
        # keras.applications preprocess_input works in place on float arrays, and the
        # same stored batch is served every epoch (and peeked at by fit)
        return self.preprocess(images.copy()), labels


class EarlyStoppingBestWeights(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without a lower validation loss; keep the best weights.

    The same rule as the PyTorch runner (``dynft_core.PlateauMonitor``), so
    both frameworks stop traditional runs identically.

    Args:
        patience: Epochs without improvement before stopping.
    """

    def __init__(self, patience: int) -> None:
        super().__init__()
        self.patience = patience
        self.monitor = PlateauMonitor(mode="min")
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.monitor.update(float((logs or {})["val_loss"]), epoch + 1):
            self.best_weights = self.model.get_weights()
        if self.monitor.wait >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class TimelineRecorder(keras.callbacks.Callback):
    """Collects the per-epoch timeline and drives the epoch progress bar.

    Args:
        bar: tqdm bar advanced once per epoch.
        unfrozen: Returns the layers/groups trainable during the current epoch.
    """

    def __init__(self, bar: tqdm, unfrozen: Callable[[], int]) -> None:
        super().__init__()
        self.bar, self.unfrozen = bar, unfrozen
        self.timeline: list[dict[str, Any]] = []
        self._lr, self._unfrozen = 0.0, 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # read at the start: the dynamic callback may swap the optimizer at epoch end
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._unfrozen = self.unfrozen()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.timeline.append(
            timeline_entry(epoch + 1, logs["loss"], logs["val_loss"], self._lr, self._unfrozen)
        )
        self.bar.set_postfix(val_loss=f"{logs['val_loss']:.4f}", unfrozen=self._unfrozen)
        self.bar.update()


def build_model(ctx: RunContext, weights: str) -> tuple[keras.Model, keras.Model, str]:
    """Base + global average pooling + softmax head; returns (model, base, weights used)."""
    base, used = build_base(ctx.backbone, weights, ctx.image_size)
    inputs = keras.Input((ctx.image_size, ctx.image_size, 3))
    features = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    outputs = keras.layers.Dense(len(ctx.class_names), activation="softmax")(features)
    return keras.Model(inputs, outputs), base, used


def _set_top_trainable(base: keras.Model, top_n: int) -> None:
    base.trainable = True
    cut = len(base.layers) - top_n
    for position, layer in enumerate(base.layers):
        layer.trainable = position >= cut and not isinstance(layer, keras.layers.BatchNormalization)


def run(cfg: StudyConfig, ctx: RunContext, data: TrainingData) -> dict[str, Any]:
    """Train, evaluate on the test split, save and time-load one model.

    Args:
        cfg: Study configuration (optimizer, budget, patience, dynamic settings).
        ctx: Which backbone/strategy/seed and where to save.
        data: The seed's split, resized to ``ctx.image_size``.

    Returns:
        The run dict of the shared contract.

    Raises:
        StudyConfigError: The traditional top-n exceeds the base's layer count.
    """
    keras.utils.set_random_seed(ctx.seed)
    spec = get_backbone(ctx.backbone)
    start = time.perf_counter()
    model, base, weights_used = build_model(ctx, cfg.weights)
    train = TrainBatches(data, spec.preprocess)
    val = EvalBatches(data, data.val, spec.preprocess)
    top_n: int | None = None
    num_groups: int | None = None
    with tqdm(total=cfg.epochs, desc=ctx.label, unit="epoch", leave=False) as bar:
        if ctx.strategy == "traditional":
            top_n = cfg.top_n_for(ctx.backbone, spec.top_n, len(base.layers), "layers of the Keras")
            _set_top_trainable(base, top_n)
            stopper = EarlyStoppingBestWeights(cfg.patience)
            recorder = TimelineRecorder(bar, lambda: top_n)
            callbacks: list[keras.callbacks.Callback] = [stopper, recorder]
        else:
            from dynft_keras import DynamicFineTuning

            tuner = DynamicFineTuning(
                backbone=base,
                groups="layers",
                patience=cfg.patience,
                step=cfg.step,
                decay=cfg.decay,
                max_epochs=cfg.epochs,
                verbose=0,
            )
            num_groups = len(tuner.groups)
            recorder = TimelineRecorder(bar, lambda: tuner.scheduler.num_unfrozen)
            callbacks = [recorder, tuner]
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.lr),
            loss="sparse_categorical_crossentropy",
        )
        model.fit(train, validation_data=val, epochs=cfg.epochs, callbacks=callbacks, verbose=0)
    wall_s = time.perf_counter() - start

    if ctx.strategy == "traditional":
        best_epoch, events = stopper.monitor.best_epoch, []
    else:
        scheduler = tuner.scheduler
        best_epoch, events = scheduler.best_epoch, unfreeze_events(scheduler.history, cfg.lr)
    test = EvalBatches(data, data.test, spec.preprocess)
    predictions = np.argmax(model.predict(test, verbose=0), axis=1)
    metrics = classification_metrics(data.test.labels, predictions, ctx.class_names)
    path = ctx.model_path(FRAMEWORK, ".keras")
    # a fresh Model over the same layers carries no optimizer: the file is what inference needs
    keras.Model(model.inputs, model.outputs).save(path)

    return run_record(
        ctx,
        framework=FRAMEWORK,
        weights=weights_used,
        metrics=metrics,
        timeline=recorder.timeline,
        best_epoch=best_epoch,
        wall_s=wall_s,
        model_path=path,
        load_s=median_load_seconds(lambda: keras.models.load_model(path, compile=False)),
        top_n=top_n,
        num_groups=num_groups,
        unfreeze_events=events,
    )

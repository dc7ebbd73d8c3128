"""One study run on Keras 3: any of the five strategies, in one ``model.fit``.

Every strategy uses the same Adam optimizer, learning rate, batches (``TrainingData``: the
``--balance`` mode's sampler and sample weights, minority-only augmentation) and epoch budget.
The fixed-depth strategies make their layers of the base trainable once and stop with
``FixedDepthStopping``; the staged ones add ``dynft_keras.DynamicFineTuning``, which takes every
decision. The base is called with ``training=False``, so BatchNorm runs in inference mode.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from tqdm.auto import tqdm

from benchmarks.study.config import StudyConfig
from benchmarks.study.data.batches import TrainingData
from benchmarks.study.models.keras_backbones import build_base, get_backbone
from benchmarks.study.results.metrics import classification_metrics
from benchmarks.study.runners.keras_batches import EvalBatches, TrainBatches
from benchmarks.study.runners.keras_callbacks import FixedDepthStopping, TimelineRecorder
from benchmarks.study.runners.keras_feature_cache import (
    EpochValidation,
    fixed_depth_callback,
    validation_loss,
)
from benchmarks.study.runners.keras_training_cache import (
    ServedModel,
    cache_limits,
    open_served_training,
)
from benchmarks.study.runners.records import (
    Outcome,
    RunContext,
    median_load_seconds,
    run_record,
    unfreeze_events,
    validation_summary,
)
from benchmarks.study.runners.strategies import (
    FIXED_DEPTH,
    fixed_depth,
    staged_plan,
    unfrozen_lr_ratio,
)

FRAMEWORK = "keras"


def configure(cfg: StudyConfig) -> dict[str, Any]:
    """Process-wide settings for repeatable runs, applied once before the first run.

    Returns:
        What was applied, for the report's determinism section.
    """
    backend = keras.backend.backend()
    settings: dict[str, Any] = {"library": f"keras {keras.__version__} ({backend} backend)"}
    if backend == "tensorflow":
        import tensorflow as tf

        if cfg.threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
                tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
            except RuntimeError:  # TensorFlow already ran an op in this process: keep its pools
                warnings.warn(
                    f"threads={cfg.threads} ignored: TensorFlow was initialised before the study",
                    RuntimeWarning,
                    stacklevel=2,
                )
        tf.config.experimental.enable_op_determinism()
        settings["op_determinism"] = True
        settings["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
        settings["inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    elif backend == "torch":
        import torch

        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        settings["deterministic_algorithms"] = True
        settings["intra_op_threads"] = torch.get_num_threads()
    else:  # JAX's CPU kernels are deterministic; it has no thread setting of its own
        settings["note"] = f"{backend}: default kernels, no thread setting"
    return settings


def build_model(ctx: RunContext, weights: str) -> tuple[keras.Model, keras.Model, str]:
    """Base + global average pooling + zero-initialised softmax head; returns (model, base,
    weights used)."""
    base, used = build_base(ctx.backbone, weights, ctx.image_size)
    inputs = keras.Input((ctx.image_size, ctx.image_size, 3))
    features = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    # zero head: starts at the uniform prediction (see TorchClassifier for why)
    head = keras.layers.Dense(
        len(ctx.class_names),
        activation="softmax",
        kernel_initializer="zeros",
        bias_initializer="zeros",
    )
    outputs = head(features)
    return keras.Model(inputs, outputs), base, used


def _set_top_trainable(base: keras.Model, top_n: int) -> None:
    base.trainable = True
    cut = len(base.layers) - top_n
    for position, layer in enumerate(base.layers):
        layer.trainable = position >= cut and not isinstance(layer, keras.layers.BatchNormalization)


Validation = Callable[[Any, int, int, dict[str, Any]], EpochValidation]


@dataclass
class _Run:
    """What a strategy's setup builds on: the whole model, its base, the batches, the progress
    bar and the validation callback's maker."""

    model: keras.Model
    base: keras.Model
    data: TrainingData
    bar: tqdm
    validation: Validation


@dataclass
class _Fit:
    """What ``model.fit`` runs for one strategy: the model it trains, on which batches, with
    which callbacks, and how the outcome is read afterwards."""

    model: keras.Model
    batches: keras.utils.PyDataset
    callbacks: list[keras.callbacks.Callback]
    outcome: Callable[[], Outcome]


def _training_batches(
    cfg: StudyConfig,
    model: keras.Model,
    tuner: Any,
    data: TrainingData,
    preprocess: Callable[[np.ndarray], np.ndarray],
    freezes: bool,
) -> tuple[keras.Model, keras.utils.PyDataset, dict[str, int], dict[str, Any]]:
    """What ``fit`` trains on which batches: the whole model on images, or, with the cache
    on and a backbone part frozen, a ``ServedModel`` on served features; also the caches'
    byte limits and the training cache (by name) for the run's figures."""
    serve = cfg.feature_cache == "auto" and freezes
    limits = cache_limits(data, cfg.feature_cache_max_gb, serve)
    served = (
        open_served_training(model, tuner, data, preprocess, limits["training"]) if serve else None
    )
    if served is None:
        return model, TrainBatches(data, preprocess), limits, {}
    return ServedModel(model, served), served, limits, {"training": served.cache}


def _fixed_depth_fit(cfg: StudyConfig, ctx: RunContext, run: _Run) -> _Fit:
    model, base, data = run.model, run.base, run.data
    spec = get_backbone(ctx.backbone)
    top_n = cfg.top_n_for(ctx.backbone, spec.top_n, len(base.layers), "layers of the Keras")
    depth = fixed_depth(ctx.strategy, top_n, len(base.layers))
    _set_top_trainable(base, depth)
    tuner = fixed_depth_callback(base, depth)
    fit_model, batches, limits, others = _training_batches(
        cfg, model, tuner, data, spec.preprocess, depth < len(base.layers)
    )
    validator = run.validation(tuner, len(base.layers), limits["validation"], others)
    stopper = FixedDepthStopping(cfg.patience, cfg.epochs)
    recorder = TimelineRecorder(run.bar, lambda: depth)

    def outcome() -> Outcome:
        figures = validator.figures.record()
        best = stopper.stopper.best_epoch
        return Outcome(recorder.timeline, best, [], top_n=depth, feature_cache=figures)

    return _Fit(fit_model, batches, [validator, stopper, recorder], outcome)


def _staged_fit(cfg: StudyConfig, ctx: RunContext, run: _Run) -> _Fit:
    base = run.base
    from dynft_keras import DynamicFineTuning, resolve_groups

    plan = staged_plan(ctx.strategy, cfg)
    groups = plan.groups(resolve_groups(base, "layers"))
    tuner = DynamicFineTuning(backbone=base, groups=groups, verbose=0, **plan.options)
    fit_model, batches, limits, others = _training_batches(
        cfg, run.model, tuner, run.data, get_backbone(ctx.backbone).preprocess, True
    )
    validator = run.validation(tuner, len(groups), limits["validation"], others)
    recorder = TimelineRecorder(run.bar, lambda: tuner.scheduler.num_unfrozen)

    def outcome() -> Outcome:
        scheduler = tuner.scheduler
        events = unfreeze_events(scheduler.history, cfg.lr)
        figures = validator.figures.record()
        return Outcome(
            recorder.timeline,
            scheduler.best_epoch,
            events,
            num_groups=len(groups),
            feature_cache=figures,
        )

    return _Fit(fit_model, batches, [validator, recorder, tuner], outcome)


def train(cfg: StudyConfig, ctx: RunContext, data: TrainingData) -> tuple[Any, Outcome, str, float]:
    """Build and train one model; returns it (on the best weights), the outcome, the weights it
    started from and the training wall time.

    Raises:
        StudyConfigError: The traditional top-n exceeds the base's layer count.
    """
    keras.utils.set_random_seed(ctx.seed)  # Python, NumPy and the backend's generators
    spec = get_backbone(ctx.backbone)
    start = time.perf_counter()
    model, base, weights_used = build_model(ctx, cfg.weights)
    val = EvalBatches(data, data.val, spec.preprocess)

    def validation(
        tuner: Any, num_groups: int, limit: int, others: dict[str, Any]
    ) -> EpochValidation:
        return EpochValidation(
            model, val, data, cfg.feature_cache, tuner, num_groups, limit, others
        )

    with tqdm(total=cfg.epochs, desc=ctx.label, unit="epoch", leave=False) as bar:
        setup = _fixed_depth_fit if ctx.strategy in FIXED_DEPTH else _staged_fit
        fit = setup(cfg, ctx, _Run(model, base, data, bar, validation))
        # a served run's ServedModel trains weights of model, which is returned
        fit.model.compile(
            optimizer=keras.optimizers.Adam(cfg.lr), loss="sparse_categorical_crossentropy"
        )
        fit.model.fit(fit.batches, epochs=cfg.epochs, callbacks=fit.callbacks, verbose=0)
    return model, fit.outcome(), weights_used, time.perf_counter() - start


def _probabilities(model: keras.Model, ctx: RunContext, data: TrainingData, split: Any) -> Any:
    batches = EvalBatches(data, split, get_backbone(ctx.backbone).preprocess)
    return model.predict(batches, verbose=0)


def validation_scores(model: Any, ctx: RunContext, data: TrainingData) -> dict[str, float]:
    """Validation loss and balanced accuracy of the trained model (what a sweep selects on)."""
    probabilities = _probabilities(model, ctx, data, data.val)
    loss = validation_loss(probabilities, data)
    predictions = np.argmax(probabilities, axis=1)
    return validation_summary(loss, data.val.labels, predictions, ctx.class_names)


def run(cfg: StudyConfig, ctx: RunContext, data: TrainingData) -> dict[str, Any]:
    """Train, score on the validation and test splits, save and time-load one model.

    Returns:
        The run dict of ``benchmarks.study.runners.records.run_record``.
    """
    model, outcome, weights_used, wall_s = train(cfg, ctx, data)
    predictions = np.argmax(_probabilities(model, ctx, data, data.test), axis=1)
    test = classification_metrics(data.test.labels, predictions, ctx.class_names)
    path = ctx.model_path(FRAMEWORK, ".keras")
    # a fresh Model over the same layers carries no optimizer: the file is what inference needs
    keras.Model(model.inputs, model.outputs).save(path)
    return run_record(
        ctx,
        framework=FRAMEWORK,
        weights=weights_used,
        lr=cfg.lr,
        lr_ratio=unfrozen_lr_ratio(ctx.strategy, cfg),
        outcome=outcome,
        test=test,
        val=validation_scores(model, ctx, data),
        wall_s=wall_s,
        model_path=path,
        load_s=median_load_seconds(lambda: keras.models.load_model(path, compile=False)),
    )

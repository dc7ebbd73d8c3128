"""Cost of the DynamicFineTuning callback on MobileNetV2 (TensorFlow backend), side by side.

Usage: ``python -m benchmarks.perf.keras_overhead [--images 192] [--epochs 4] [--rounds 6]``

Three figures, each from real runs in this one process (medians of epochs,
the first epoch of every ``fit`` dropped because it traces the functions):

(a) epoch time with the callback and no unfreeze / plain ``fit`` with the
    same trainable layers (goal <= 1.01). Plain and callback fits alternate,
    ``--rounds`` times, so that load from other processes hits both alike;
(b) bytes copied per snapshot / bytes of the trainable weights (goal <= 1.05),
    with the head only, half and all groups unfrozen;
(c) head-only epoch / fully unfrozen epoch, training only (goal <= 0.5): the
    frozen backbone must cost no backward pass;
(d) fully unfrozen training epoch under the ``FineTuningOptimizer`` a run with step 3
    ends with (the head's optimizer and one per unfreeze) / under the compiled optimizer
    alone (goal <= 1.05): the per-group rates must cost no time per step.

The ImageNet weights are loaded from the shared folder when present
(``$DYNFT_SHARED`` or ``../shared``); timings do not depend on them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from dynft_keras import (  # noqa: E402
    DynamicFineTuning,
    FineTuningOptimizer,
    WeightSnapshot,
    changeable_variables,
)
from dynft_keras.freezing import apply_trainable, group_variables  # noqa: E402
from dynft_keras.groups import resolve_groups  # noqa: E402
from dynft_keras.optimizer import rebuild_step_functions  # noqa: E402

WEIGHTS = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
NUM_CLASSES = 7


class EpochTimer(keras.callbacks.Callback):
    """Wall time from ``on_epoch_begin`` to ``on_epoch_end``; list it last."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class TimedDynamicFineTuning(DynamicFineTuning):
    """The callback, timing its own epoch-end work (decision, snapshot, logs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hook_seconds: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        start = time.perf_counter()
        super().on_epoch_end(epoch, logs)
        self.hook_seconds.append(time.perf_counter() - start)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def shared_weights() -> Path | None:
    root = Path(os.environ.get("DYNFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    path = root / WEIGHTS
    return path if path.is_file() else None


def build(size: int) -> tuple[keras.Model, keras.Model, str]:
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    weights = shared_weights()
    if weights is not None:
        base.load_weights(str(weights))
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    source = "ImageNet (shared file)" if weights is not None else "random init"
    return keras.Model(inputs, outputs), base, source


def compile_fresh(model: keras.Model) -> None:
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")


def timed_fit(model, data, epochs, validation=None, callbacks=()) -> list[float]:
    """Epoch times of one fit, first epoch dropped."""
    timer = EpochTimer()
    model.fit(
        *data,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        validation_data=validation,
        callbacks=[*callbacks, timer],
    )
    return timer.seconds[1:]


def trainable_bytes(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.trainable_weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192, help="training images (default 192)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit (default 4)")
    parser.add_argument("--rounds", type=int, default=6, help="plain/callback pairs (default 6)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    args = parser.parse_args()
    if keras.backend.backend() != "tensorflow":
        raise SystemExit(f"run with KERAS_BACKEND=tensorflow, not {keras.backend.backend()!r}")

    keras.utils.set_random_seed(0)
    model, base, source = build(args.size)
    groups = resolve_groups(base, "layers")
    rng = np.random.default_rng(0)

    def batch(count: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.uniform(-1, 1, size=(count, args.size, args.size, 3)).astype("float32")
        labels = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, count)]
        return images, labels

    train, validation = batch(args.images), batch(max(32, args.images // 3))
    print(f"date            {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine         {cpu_name()}, "
        f"{os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"
    )
    print(
        f"versions        keras {keras.__version__}, tensorflow "
        f"{__import__('tensorflow').__version__}"
    )
    print(
        f"model           MobileNetV2 {args.size}px, {source}, {len(groups)} groups "
        f"('layers'), {args.images} train / {len(validation[0])} val images, batch 32"
    )

    # (a) callback without an unfreeze vs plain fit, same trainable set (head only).
    plain_times: list[float] = []
    callback_times: list[float] = []
    snapshots = 0
    hook_seconds: list[float] = []
    for _ in range(args.rounds):
        apply_trainable(base, groups, 0)
        compile_fresh(model)
        plain_times += timed_fit(model, train, args.epochs, validation)
        compile_fresh(model)
        cb = TimedDynamicFineTuning(base, patience=10_000, max_epochs=10_000, verbose=0)
        callback_times += timed_fit(model, train, args.epochs, validation, [cb])
        snapshots += sum(d.improved for d in cb.scheduler.history)
        hook_seconds += cb.hook_seconds
    plain, with_callback = statistics.median(plain_times), statistics.median(callback_times)
    print(f"(a) epoch, plain fit           {plain:7.3f} s  (median of {len(plain_times)})")
    print(
        f"    epoch, with callback       {with_callback:7.3f} s  (median of "
        f"{len(callback_times)}; {snapshots} snapshots taken)"
    )
    print(f"    ratio                      {with_callback / plain:7.3f}   goal <= 1.01")
    hook = statistics.median(hook_seconds)
    print(
        f"    callback's own epoch-end work {hook * 1e3:6.2f} ms median, "
        f"{max(hook_seconds) * 1e3:.2f} ms max = {hook / plain:.4f} of a plain epoch"
    )
    print(f"    epochs (s), plain          {' '.join(f'{t:.3f}' for t in plain_times)}")
    print(f"    epochs (s), callback       {' '.join(f'{t:.3f}' for t in callback_times)}")

    # (b) snapshot size against the trainable weights, at three stages.
    for unfrozen in (0, len(groups) // 2, len(groups)):
        apply_trainable(base, groups, unfrozen)
        snapshot = WeightSnapshot()
        start = time.perf_counter()
        snapshot.capture(changeable_variables(model), epoch=1)
        elapsed = time.perf_counter() - start
        ratio = snapshot.nbytes / trainable_bytes(model)
        print(
            f"(b) {unfrozen:2d}/{len(groups)} groups unfrozen: snapshot "
            f"{snapshot.nbytes / 1e6:7.3f} MB / trainable {trainable_bytes(model) / 1e6:7.3f} MB"
            f" = {ratio:.3f} (goal <= 1.05), {elapsed * 1e3:.1f} ms"
        )

    # (c) head-only against fully unfrozen training epochs (BatchNorm frozen in both).
    apply_trainable(base, groups, 0)
    compile_fresh(model)
    head_only_times = timed_fit(model, train, args.epochs)
    apply_trainable(base, groups, len(groups))
    compile_fresh(model)
    full_times = timed_fit(model, train, args.epochs)
    head_only, full = statistics.median(head_only_times), statistics.median(full_times)
    print(
        f"(c) train epoch, head only     {head_only:7.3f} s  ({args.images / head_only:.0f} img/s)"
    )
    print(f"    train epoch, all unfrozen  {full:7.3f} s  ({args.images / full:.0f} img/s)")
    print(f"    ratio                      {head_only / full:7.3f}   goal <= 0.5")
    print(f"    epochs (s), head only      {' '.join(f'{t:.3f}' for t in head_only_times)}")
    print(f"    epochs (s), all unfrozen   {' '.join(f'{t:.3f}' for t in full_times)}")

    # (d) all groups unfrozen: one optimizer per unfreeze (step 3) against the compiled one.
    one_times: list[float] = []
    grouped_times: list[float] = []
    unfreezes = 0
    for _ in range(max(1, args.rounds // 2)):
        apply_trainable(base, groups, len(groups))
        compile_fresh(model)
        one_times += timed_fit(model, train, args.epochs)
        compile_fresh(model)
        apply_trainable(base, groups, 0)
        optimizer = FineTuningOptimizer.wrap(model.optimizer)
        optimizer.build(model.trainable_variables)
        unfreezes = 0
        for first in range(len(groups) - 3, -3, -3):  # deepest first, 3 groups at a time
            chunk = groups[max(first, 0) : first + 3]
            apply_trainable(base, groups, len(groups) - max(first, 0))
            variables = [v for group in chunk for v in group_variables(group, [])]
            optimizer.add_group(variables, 1.0, model.trainable_variables)
            unfreezes += 1
        model.optimizer = optimizer
        rebuild_step_functions(model)
        grouped_times += timed_fit(model, train, args.epochs)
    one, grouped = statistics.median(one_times), statistics.median(grouped_times)
    print(f"(d) train epoch, one optimizer {one:7.3f} s  (median of {len(one_times)})")
    print(
        f"    train epoch, {unfreezes + 1} optimizers  {grouped:7.3f} s  (head + {unfreezes} "
        f"unfreezes; median of {len(grouped_times)})"
    )
    print(f"    ratio                      {grouped / one:7.3f}   goal <= 1.05")
    print(f"    epochs (s), one optimizer  {' '.join(f'{t:.3f}' for t in one_times)}")
    print(f"    epochs (s), per group      {' '.join(f'{t:.3f}' for t in grouped_times)}")


if __name__ == "__main__":
    main()

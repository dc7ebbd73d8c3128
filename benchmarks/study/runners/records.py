"""What one study run records: its context, epoch timeline, unfreeze events and the run dict."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOAD_REPEATS = 3


def unfreeze_events(history: list[Any], lr0: float) -> list[dict[str, Any]]:
    """Run-dict entries of the unfreezes in a scheduler's ``history`` of ``Decision``s.

    Each entry's ``lr`` is the rate after that unfreeze's decay, replayed from
    ``lr0`` with the decisions' ``lr_factor``s: the adapters apply exactly these
    factors, and the Keras callback swaps its optimizer, so no optimizer holds
    the whole story.
    """
    events, lr = [], lr0
    for decision in history:
        lr *= decision.lr_factor
        if decision.unfroze:
            events.append(
                {
                    "epoch": decision.epoch,
                    "groups": list(decision.newly_unfrozen),
                    "num_unfrozen": decision.num_unfrozen,
                    "lr": lr,
                }
            )
    return events


def timeline_entry(
    epoch: int, train_loss: float, val_loss: float, lr: float, num_unfrozen: int
) -> dict[str, Any]:
    """One epoch of the run's training timeline (``lr``: the rate that epoch trained with)."""
    return {
        "epoch": epoch,
        "train_loss": float(train_loss),
        "val_loss": float(val_loss),
        "lr": float(lr),
        "num_unfrozen": int(num_unfrozen),
    }


@dataclass
class RunContext:
    """What one run needs besides its training data.

    Args:
        backbone: Backbone name.
        strategy: One of ``benchmarks.study.config.STRATEGIES``.
        seed: Seed of the run (split, sampling, augmentation, head init).
        data_name: Name of the data source, as given to ``--data``.
        synthetic: Whether the data are synthetic.
        class_names: Class names in label order.
        image_size: Side of the input images.
        out_dir: Study output folder; models go to ``out_dir/models``.
    """

    backbone: str
    strategy: str
    seed: int
    data_name: str
    synthetic: bool
    class_names: list[str]
    image_size: int
    out_dir: Path

    @property
    def label(self) -> str:
        """``"resnet50 dynamic seed 0"``, for progress bars."""
        return f"{self.backbone} {self.strategy} seed {self.seed}"

    def model_path(self, framework: str, suffix: str) -> Path:
        """Where this run's model is saved (folder created)."""
        folder = self.out_dir / "models"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{framework}_{self.backbone}_{self.strategy}_seed{self.seed}{suffix}"


@dataclass
class Outcome:
    """What training one strategy produced, before the test split is scored.

    Args:
        timeline: One :func:`timeline_entry` per epoch.
        best_epoch: Epoch of the best validation loss (the weights the run ends on).
        unfreeze_events: :func:`unfreeze_events` of a staged strategy (empty otherwise).
        top_n: Backbone layers a fixed-depth strategy trains, else ``None``.
        num_groups: Groups the adapter of a staged strategy unfreezes, else ``None``.
        feature_cache: The run's feature-cache figures
            (``benchmarks.study.runners.feature_cache_runs.CacheFigures.record``).
    """

    timeline: list[dict[str, Any]]
    best_epoch: int | None
    unfreeze_events: list[dict[str, Any]]
    top_n: int | None = None
    num_groups: int | None = None
    feature_cache: dict[str, Any] = field(default_factory=dict)


def run_record(
    ctx: RunContext,
    *,
    framework: str,
    weights: str,
    lr: float,
    lr_ratio: float | None,
    outcome: Outcome,
    test: dict[str, Any],
    val: dict[str, Any],
    wall_s: float,
    model_path: Path,
    load_s: float,
) -> dict[str, Any]:
    """The run dict that ``benchmarks.study.results.report`` consumes (keys fixed there).

    Args:
        ctx: The run's context.
        framework: ``"torch"`` or ``"keras"``.
        weights: What the backbone was initialised with.
        lr: The base learning rate the run trained with.
        lr_ratio: The unfrozen groups' rate relative to the head's (``None`` for a strategy
            that unfreezes nothing).
        outcome: What training produced.
        test: ``classification_metrics`` of the final model on the test split.
        val: ``{"loss", "balanced_accuracy"}`` of the final model on the validation split
            (what a learning-rate sweep selects on; the test split never is).
        wall_s: Training wall time.
        model_path: The saved model (recorded relative to ``ctx.out_dir``).
        load_s: Median load time of the saved model.
    """
    return {
        "framework": framework,
        "backbone": ctx.backbone,
        "strategy": ctx.strategy,
        "seed": ctx.seed,
        "weights": weights,
        "data": ctx.data_name,
        "synthetic": ctx.synthetic,
        "image_size": ctx.image_size,
        "lr": lr,
        "unfrozen_lr_ratio": lr_ratio,
        "accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
        "macro_f1": test["macro_f1"],
        "per_class": test["per_class"],
        "confusion_normalized": test["confusion_normalized"],
        "class_names": list(ctx.class_names),
        "val_loss": val["loss"],
        "val_balanced_accuracy": val["balanced_accuracy"],
        "epochs": len(outcome.timeline),
        "best_epoch": outcome.best_epoch,
        "wall_s": wall_s,
        "size_mb": file_size_mb(model_path),
        "load_s": load_s,
        "top_n": outcome.top_n,
        "num_groups": outcome.num_groups,
        "unfreeze_events": outcome.unfreeze_events,
        "timeline": outcome.timeline,
        **outcome.feature_cache,
        "model_path": model_path.relative_to(ctx.out_dir).as_posix(),
    }


def validation_summary(
    loss: float, labels: Any, predictions: Any, class_names: list[str]
) -> dict[str, float]:
    """``{"loss", "balanced_accuracy"}`` of a final model on the validation split."""
    from benchmarks.study.results.metrics import classification_metrics

    scores = classification_metrics(labels, predictions, class_names)
    return {"loss": float(loss), "balanced_accuracy": scores["balanced_accuracy"]}


def file_size_mb(path: Path) -> float:
    """Size on disk in MB (10**6 bytes) of a file or of every file below a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def median_load_seconds(load: Callable[[], object]) -> float:
    """Median wall time of ``LOAD_REPEATS`` calls of ``load`` (a full model load each).

    Args:
        load: Loads the saved model once.
    """
    times = []
    for _ in range(LOAD_REPEATS):
        start = time.perf_counter()
        load()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

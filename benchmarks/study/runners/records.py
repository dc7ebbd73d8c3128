"""What one study run records: its context, epoch timeline, unfreeze events and the run dict."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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
        strategy: ``"traditional"`` or ``"dynamic"``.
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


def run_record(
    ctx: RunContext,
    *,
    framework: str,
    weights: str,
    metrics: dict[str, Any],
    timeline: list[dict[str, Any]],
    best_epoch: int | None,
    wall_s: float,
    model_path: Path,
    load_s: float,
    top_n: int | None,
    num_groups: int | None,
    unfreeze_events: list[dict[str, Any]],
) -> dict[str, Any]:
    """The run dict that ``benchmarks.study.results.report`` consumes (keys fixed there)."""
    return {
        "framework": framework,
        "backbone": ctx.backbone,
        "strategy": ctx.strategy,
        "seed": ctx.seed,
        "weights": weights,
        "data": ctx.data_name,
        "synthetic": ctx.synthetic,
        "image_size": ctx.image_size,
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_class": metrics["per_class"],
        "confusion_normalized": metrics["confusion_normalized"],
        "class_names": list(ctx.class_names),
        "epochs": len(timeline),
        "best_epoch": best_epoch,
        "wall_s": wall_s,
        "size_mb": file_size_mb(model_path),
        "load_s": load_s,
        "top_n": top_n,
        "num_groups": num_groups,
        "unfreeze_events": unfreeze_events,
        "timeline": timeline,
        "model_path": str(model_path),
    }


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

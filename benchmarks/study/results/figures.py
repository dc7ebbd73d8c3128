"""The study's figures, drawn with matplotlib's Agg canvas (no display needed).

Accuracy and F1 bars per backbone for every strategy run (the paper's Figs 3-4: traditional
blue, dynamic orange), the normalised confusion matrix of the best run (Fig 5) and one training
timeline per run (validation loss, learning rate, unfreeze events).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.study.config import STRATEGIES

STRATEGY_COLOURS = {
    "linear_probe": "tab:gray", "two_stage": "tab:green", "full": "tab:purple",
    "traditional": "tab:blue", "dynamic": "tab:orange", "dynamic_tuned": "tab:red",
}  # fmt: skip
EVENT_LABEL_STYLE: dict[str, Any] = {
    "xycoords": ("data", "axes fraction"), "xytext": (-2, -4), "textcoords": "offset points",
    "rotation": 90, "va": "top", "ha": "right", "fontsize": 7, "color": "tab:red",
}  # fmt: skip


def _label(run: dict, frameworks: set[str]) -> str:
    return run["backbone"] if len(frameworks) == 1 else f"{run['framework']}/{run['backbone']}"


def grouped_runs(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """label -> strategy -> runs, in first-seen backbone order."""
    frameworks = {run["framework"] for run in runs}
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[_label(run, frameworks)][run["strategy"]].append(run)
    return groups


def run_name(run: dict) -> str:
    """``"torch resnet50 dynamic seed 0"``: how captions, links and titles name a run."""
    return f"{run['framework']} {run['backbone']} {run['strategy']} seed {run['seed']}"


def best_run(runs: list[dict]) -> dict:
    """The run with the highest balanced accuracy (ties: macro-F1, then accuracy)."""
    return max(
        runs,
        key=lambda run: (
            float(run["balanced_accuracy"]),
            float(run["macro_f1"]),
            float(run["accuracy"]),
        ),
    )


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def draw_figures(figures_dir: Path, runs: list[dict]) -> dict:
    """Draw every figure into ``figures_dir``; return their paths by kind."""
    groups = grouped_runs(runs)
    figures: dict[str, Any] = {
        "accuracy": _bar_figure(groups, "accuracy", "Accuracy (%)", figures_dir),
        "macro_f1": _bar_figure(groups, "macro_f1", "Macro-F1 (%)", figures_dir),
        "confusion": None,
        "timelines": [],
    }
    best = best_run(runs)
    if best.get("confusion_normalized") and best.get("class_names"):
        figures["confusion"] = _confusion_figure(best, figures_dir / "confusion_best.png")
    for run in runs:
        if run.get("timeline"):
            stem = (
                f"timeline_{run['framework']}_{run['backbone']}_{run['strategy']}_seed{run['seed']}"
            )
            path = figures_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + ".png")
            figures["timelines"].append((run, _timeline_figure(run, path)))
    return figures


def _bar_figure(groups, metric: str, axis_label: str, figures_dir: Path) -> Path:
    labels = list(groups)
    strategies = [s for s in STRATEGIES if any(s in groups[label] for label in labels)]
    figure = Figure(figsize=(max(6.0, 0.5 * len(strategies) * len(labels) + 3), 4.2))
    axes = figure.add_subplot()
    width = 0.8 / len(strategies)
    offsets = [(index - (len(strategies) - 1) / 2) * width for index in range(len(strategies))]
    for offset, strategy in zip(offsets, strategies, strict=True):
        means, errors = [], []
        for label in labels:
            values = [100 * float(run[metric]) for run in groups[label].get(strategy, [])]
            means.append(float(np.mean(values)) if values else math.nan)
            errors.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        positions = np.arange(len(labels)) + offset
        colour = STRATEGY_COLOURS[strategy]
        bars = axes.bar(
            positions, means, width, yerr=errors, capsize=3, label=strategy, color=colour
        )
        texts = [f"{mean:.1f}" if math.isfinite(mean) else "" for mean in means]
        axes.bar_label(bars, labels=texts, fontsize=7, padding=2)
    axes.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right")
    axes.set_ylabel(axis_label)
    axes.set_ylim(0, 105)
    axes.set_title(f"{axis_label} per backbone, mean ± SD over seeds", fontsize=10)
    axes.legend(loc="lower right")
    path = figures_dir / f"{metric}_by_backbone.png"
    _save(figure, path)
    return path


def _confusion_figure(run: dict, path: Path) -> Path:
    matrix = np.asarray(run["confusion_normalized"], dtype=float)
    names = list(run["class_names"])
    size = 2.5 + 0.7 * len(names)
    figure = Figure(figsize=(size + 1.2, size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046)
    for row, column in np.ndindex(matrix.shape):
        colour = "white" if matrix[row, column] > 0.5 else "black"
        text = f"{matrix[row, column]:.2f}"
        axes.text(column, row, text, ha="center", va="center", color=colour, fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=35, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    axes.set_title(f"Normalised confusion: {run['backbone']} {run['strategy']} seed {run['seed']}")
    _save(figure, path)
    return path


def _timeline_figure(run: dict, path: Path) -> Path:
    timeline = run["timeline"]
    epochs = [entry["epoch"] for entry in timeline]
    figure = Figure(figsize=(7.0, 3.8))
    loss_axes = figure.add_subplot()
    for key, style in (("train_loss", ":"), ("val_loss", "-")):
        values = [entry.get(key) for entry in timeline]
        if any(value is not None for value in values):
            values = [np.nan if value is None else value for value in values]
            loss_axes.plot(epochs, values, style, marker=".", label=key.replace("_", " "))
    loss_axes.set_xlabel("Epoch")
    loss_axes.set_ylabel("Loss")
    rate_axes = loss_axes.twinx()
    rates = [entry.get("lr") for entry in timeline]
    if all(rate is not None and rate > 0 for rate in rates):
        rate_axes.step(epochs, rates, where="post", color="tab:green", label="learning rate")
        rate_axes.set_yscale("log")
    rate_axes.set_ylabel("Learning rate")
    for event in run.get("unfreeze_events") or []:
        loss_axes.axvline(event["epoch"], color="tab:red", linestyle="--", linewidth=1)
        text = f"{event['num_unfrozen']} unfrozen"
        loss_axes.annotate(text, (event["epoch"], 1.0), **EVENT_LABEL_STYLE)
    handles, names = loss_axes.get_legend_handles_labels()
    more_handles, more_names = rate_axes.get_legend_handles_labels()
    loss_axes.legend(handles + more_handles, names + more_names, fontsize=8, loc="upper right")
    loss_axes.set_title(run_name(run))
    _save(figure, path)
    return path

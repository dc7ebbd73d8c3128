"""The study report: results.csv, results.json, report.md and figures/, each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.study.config import STRATEGIES
from benchmarks.study.results.baselines import describe
from benchmarks.study.results.figures import draw_figures
from benchmarks.study.results.files import write_csv_atomic, write_json_atomic, write_text_atomic
from benchmarks.study.results.markdown import render
from benchmarks.study.results.stats import compare_strategies, summarize_seeds
from benchmarks.study.runners.feature_cache_runs import RECORD_FIELDS

RESULT_COLUMNS = [
    "framework", "backbone", "strategy", "seed", "weights", "data", "synthetic", "image_size",
    "lr", "unfrozen_lr_ratio", "accuracy", "balanced_accuracy", "macro_f1", "epochs",
    "best_epoch", "wall_s", "size_mb", "load_s", "top_n", "num_groups", "num_unfreeze_events",
    "sanity", *RECORD_FIELDS,
]  # fmt: skip
REQUIRED_RUN_KEYS = (
    "framework", "backbone", "strategy", "seed", "weights", "accuracy", "balanced_accuracy",
    "macro_f1", "epochs", "wall_s", "size_mb", "load_s",
)  # fmt: skip


def check_runs(runs: list[dict[str, Any]]) -> None:
    """Refuse an empty run list, a run missing a required key, or an unknown strategy."""
    if not runs:
        raise ValueError("a report needs at least one run")
    for position, run in enumerate(runs):
        missing = [key for key in REQUIRED_RUN_KEYS if key not in run]
        if missing:
            raise ValueError(f"run {position} lacks keys {missing}; has {sorted(run)}")
        if run["strategy"] not in STRATEGIES:
            raise ValueError(f"run {position} has strategy {run['strategy']!r}; use {STRATEGIES}")


def statistics_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired tests (dynamic vs each other strategy) and seed summaries of the runs."""
    return {"paired": compare_strategies(runs), "seeds": summarize_seeds(runs)}


def write_results(out_dir: Path, runs: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """results.csv and results.json only: cheap enough to rewrite after every run."""
    check_runs(runs)
    out_dir = Path(out_dir)
    rows = [
        {
            **run,
            "num_unfreeze_events": len(run.get("unfreeze_events") or []),
            "sanity": "; ".join(describe(flag) for flag in run.get("sanity") or []),
        }
        for run in runs
    ]
    write_csv_atomic(out_dir / "results.csv", RESULT_COLUMNS, rows)
    document = {"meta": meta, "statistics": statistics_of(runs), "runs": runs}
    write_json_atomic(out_dir / "results.json", document)


def write_report(out_dir: Path, runs: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write results.csv, results.json, figures/ and report.md into ``out_dir``.

    Args:
        out_dir: Output folder (created if needed).
        runs: One dict per (backbone, strategy, seed) run, with at least ``REQUIRED_RUN_KEYS``;
            ``per_class``, ``confusion_normalized``, ``class_names``, ``timeline``,
            ``unfreeze_events``, ``baselines`` and ``sanity`` feed the tables and figures when
            present.
        meta: Study settings (data, framework, preset, seeds, weights, environment, split_notes,
            command, ``synthetic``, ``incomplete`` ...).

    Returns:
        Path of report.md.
    """
    check_runs(runs)
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir, runs, meta)
    figures = draw_figures(figures_dir, runs)
    report = out_dir / "report.md"
    write_text_atomic(report, render(runs, meta, statistics_of(runs), figures, out_dir))
    return report

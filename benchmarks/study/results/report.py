"""The study report: results.csv, results.json, report.md, and the figures (see ``figures``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from benchmarks.study.config import STRATEGIES
from benchmarks.study.results.figures import best_run, draw_figures, grouped_runs, run_name
from benchmarks.study.results.stats import (
    METRICS,
    compare_strategies,
    format_seed_summary,
    summarize_seeds,
)

RESULT_COLUMNS = (
    "framework",
    "backbone",
    "strategy",
    "seed",
    "weights",
    "data",
    "synthetic",
    "image_size",
    "accuracy",
    "macro_f1",
    "epochs",
    "best_epoch",
    "wall_s",
    "size_mb",
    "load_s",
    "top_n",
    "num_groups",
    "num_unfreeze_events",
)
REQUIRED_RUN_KEYS = (
    "framework",
    "backbone",
    "strategy",
    "seed",
    "weights",
    "accuracy",
    "macro_f1",
    "epochs",
    "wall_s",
    "size_mb",
    "load_s",
)
SETUP_KEYS = (
    "data", "framework", "preset", "backbones", "strategies", "seeds", "image_size", "epochs",
    "weights", "command",
)  # fmt: skip
SYNTHETIC_BANNER = (
    "> **SYNTHETIC DATA — NOT CLINICAL RESULTS.** These numbers come from a generated phantom "
    "and only show that the pipeline runs; they say nothing about diagnostic performance."
)


def write_report(out_dir: Path, runs: list[dict], meta: dict) -> Path:
    """Write results.csv, results.json, report.md and figures/ into ``out_dir``.

    Args:
        out_dir: Output folder (created if needed).
        runs: One dict per (backbone, strategy, seed) run, with at least ``REQUIRED_RUN_KEYS``;
            ``per_class``, ``confusion_normalized``, ``class_names``, ``timeline`` and
            ``unfreeze_events`` feed the figures when present.
        meta: Study settings (data, framework, preset, seeds, weights, environment, split_notes,
            command, ``synthetic``, ...).

    Returns:
        Path of report.md.
    """
    if not runs:
        raise ValueError("write_report needs at least one run")
    for position, run in enumerate(runs):
        missing = [key for key in REQUIRED_RUN_KEYS if key not in run]
        if missing:
            raise ValueError(f"run {position} lacks keys {missing}; has {sorted(run)}")
        if run["strategy"] not in STRATEGIES:
            raise ValueError(f"run {position} has strategy {run['strategy']!r}; use {STRATEGIES}")
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "results.csv", runs)
    statistics = {"paired": compare_strategies(runs), "seeds": summarize_seeds(runs)}
    document = {"meta": meta, "statistics": statistics, "runs": runs}
    with (out_dir / "results.json").open("w") as handle:
        json.dump(_jsonable(document), handle, indent=2, allow_nan=False)
    figures = draw_figures(figures_dir, runs)
    report = out_dir / "report.md"
    report.write_text(_markdown(runs, meta, statistics, figures, out_dir))
    return report


def _write_csv(path: Path, runs: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            row = {key: run.get(key) for key in RESULT_COLUMNS}
            row["num_unfreeze_events"] = len(run.get("unfreeze_events") or [])
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def _jsonable(value):
    """Plain JSON types; NaN and infinities become null so any JSON parser reads the file."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _mean_sd(values: list, scale: float = 1.0, digits: int = 1) -> str:
    values = [scale * float(value) for value in values if value is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _or_dash(value) -> str:
    return "–" if value is None else str(value)


def _number(value, pattern: str) -> str:
    return "–" if value is None or not math.isfinite(value) else pattern.format(value)


def _table(header: str, rows: list[list]) -> list[str]:
    """Markdown table; ``header`` is the column titles joined by ``|``."""
    columns = header.split("|")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _strategy_table(groups, strategy: str) -> list[str]:
    if strategy == "traditional":
        header = "Backbone|ACC (%)|F1 (%)|NB layers (n)|Epochs|Load time (s)|Size (MB)|Weights"
    else:
        header = (
            "Backbone|ACC (%)|F1 (%)|Groups (L)|Unfreeze events|Epochs|Load time (s)|Size (MB)"
            "|Weights"
        )
    rows = []
    for label, by_strategy in groups.items():
        members = by_strategy.get(strategy, [])
        if not members:
            continue
        if strategy == "traditional":
            depth = [_or_dash(members[0].get("top_n"))]
        else:
            events = [len(run.get("unfreeze_events") or []) for run in members]
            depth = [_or_dash(members[0].get("num_groups")), _mean_sd(events)]
        scores = [_mean_sd([run[key] for run in members], 100) for key in ("accuracy", "macro_f1")]
        costs = [
            _mean_sd([run["epochs"] for run in members]),
            _mean_sd([run["load_s"] for run in members], digits=3),
            _mean_sd([run["size_mb"] for run in members], digits=2),
        ]
        rows.append([label, *scores, *depth, *costs, members[0]["weights"]])
    return _table(header, rows) if rows else [f"No {strategy} runs."]


def _setup_section(runs: list[dict], meta: dict) -> list[str]:
    lines = ["## Setup", ""]
    lines += [f"- **{key}**: {meta[key]}" for key in SETUP_KEYS if key in meta]
    lines.append(f"- **runs**: {len(runs)} (seeds {sorted({run['seed'] for run in runs})})")
    lines += [f"- **{name}**: {value}" for name, value in (meta.get("environment") or {}).items()]
    if meta.get("split_notes"):
        lines += ["", "### Data split", ""] + [f"- {note}" for note in meta["split_notes"]]
    return lines + [""]


def _statistics_section(statistics: dict) -> list[str]:
    lines = ["## Seed summaries (95 % CI, t distribution)", ""]
    seed_rows = []
    for row in statistics["seeds"]:
        summaries = [format_seed_summary(row[metric]) for metric in METRICS]
        seed_rows.append([row["backbone"], row["strategy"], len(row["seeds"]), *summaries])
    lines += _table("Backbone|Strategy|Seeds|ACC (%)|F1 (%)", seed_rows)
    lines += ["", "## Paired tests: dynamic − traditional", ""]
    test_rows = [
        [
            metric, result["unit"], result["n"], _number(100 * result["mean"], "{:+.2f}"),
            _number(100 * result["sd"], "{:.2f}"), _number(result["t"], "{:.3f}"), result["df"],
            _number(result["p_t"], "{:.4f}"), _number(result["wilcoxon_w"], "{:.1f}"),
            _number(result["p_wilcoxon"], "{:.4f}"), result["note"],
        ]
        for metric, result in statistics["paired"].items()
    ]  # fmt: skip
    header = "Metric|Pair|n|Mean (pp)|SD (pp)|t|df|p (t-test)|W|p (Wilcoxon)|Note"
    return (
        lines
        + _table(header, test_rows)
        + [
            "",
            "Paired t-test: `scipy.stats.ttest_rel`; Wilcoxon signed-rank: `scipy.stats.wilcoxon` "
            "(both two-sided). With few pairs the tests have little power; read them with the "
            "per-backbone tables.",
            "",
        ]
    )


def _best_run_section(best: dict) -> list[str]:
    lines = [
        "## Best run",
        "",
        f"{run_name(best)}: accuracy {100 * float(best['accuracy']):.2f} %, macro-F1 "
        f"{100 * float(best['macro_f1']):.2f} %.",
        "",
    ]
    if best.get("per_class"):
        rows = [
            [
                name,
                *(f"{scores[key]:.3f}" for key in ("precision", "recall", "f1")),
                scores["support"],
            ]
            for name, scores in best["per_class"].items()
        ]
        lines += _table("Class|Precision|Recall|F1|Support", rows) + [""]
    return lines


def _figures_section(figures: dict, out_dir: Path) -> list[str]:
    captions = {
        "accuracy": "Accuracy per backbone (Fig. 3)",
        "macro_f1": "Macro-F1 per backbone (Fig. 4)",
        "confusion": "Normalised confusion matrix of the best run (Fig. 5)",
    }
    lines = ["## Figures", ""]
    for key, title in captions.items():
        if figures[key] is not None:
            lines += [f"![{title}]({figures[key].relative_to(out_dir).as_posix()})", ""]
    if figures["timelines"]:
        lines += ["### Training timelines (validation loss, learning rate, unfreeze events)", ""]
        for run, path in figures["timelines"]:
            lines.append(f"- [{run_name(run)}]({path.relative_to(out_dir).as_posix()})")
    return lines


def _markdown(runs, meta, statistics, figures, out_dir: Path) -> str:
    synthetic = bool(meta.get("synthetic")) or any(run.get("synthetic") for run in runs)
    groups = grouped_runs(runs)
    banner = [SYNTHETIC_BANNER, ""] if synthetic else []
    lines = ["# Fine-tuning study: traditional vs dynamic", "", *banner]
    lines += _setup_section(runs, meta)
    lines += ["## Traditional fine-tuning (Table 3 layout)", ""]
    lines += _strategy_table(groups, "traditional")
    lines += ["", "## Dynamic fine-tuning (Table 4 layout)", ""]
    lines += _strategy_table(groups, "dynamic")
    lines += ["", "Values are mean ± SD over seeds where more than one seed ran.", ""]
    lines += _statistics_section(statistics)
    lines += _best_run_section(best_run(runs))
    lines += _figures_section(figures, out_dir)
    lines += ["", *banner]
    return "\n".join(lines).rstrip() + "\n"

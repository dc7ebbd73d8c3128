"""The report of a suite (``OUT/report.md``): per part, each strategy's mean and 95 % CI over
seeds, the trivial baselines, wall time per strategy, paired tests and links to the figures."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.study.config import STRATEGIES
from benchmarks.study.results.baselines import BASELINE_METRICS, BASELINE_NAMES
from benchmarks.study.results.files import write_json_atomic, write_text_atomic
from benchmarks.study.results.markdown import METRIC_TITLES, number, summary_cell, table
from benchmarks.study.results.stats import compare_strategies, seed_summary


def _strategy_rows(document: dict[str, Any]) -> list[list[Any]]:
    runs = document["runs"]
    trials = defaultdict(float)
    for result in (document["meta"].get("sweep") or {}).get("results", []):
        trials[result["strategy"]] += sum(trial["wall_s"] for trial in result["trials"])
    rows = []
    for strategy in STRATEGIES:
        members = [run for run in runs if run["strategy"] == strategy]
        if not members:
            continue
        wall = [run["wall_s"] for run in members]
        rates = sorted({f"{run['lr']:g}" for run in members})
        rows.append(
            [
                strategy,
                len(members),
                ", ".join(rates),
                *(
                    summary_cell(seed_summary([run[m] for run in members]))
                    for m in BASELINE_METRICS
                ),
                sum(1 for run in members if run.get("sanity")),
                f"{sum(wall) / len(wall):.0f}",
                f"{(sum(wall) + trials[strategy]) / 60:.1f}",
            ]
        )
    for key, name in BASELINE_NAMES.items():
        scores = {run["seed"]: run["baselines"][key] for run in runs if run.get("baselines")}
        values = [
            summary_cell(seed_summary([s[m] for s in scores.values()])) for m in BASELINE_METRICS
        ]
        rows.append([f"*{name}*", len(scores), "–", *values, "–", "–", "–"])
    return rows


def _paired_rows(document: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for other, results in compare_strategies(document["runs"]).items():
        for metric, result in results.items():
            rows.append(
                [
                    other, METRIC_TITLES[metric], result["n"],
                    number(100 * result["mean"], "{:+.2f}"),
                    f"[{number(100 * result['ci95_low'], '{:+.2f}')}, "
                    f"{number(100 * result['ci95_high'], '{:+.2f}')}]",
                    number(result["p_t"], "{:.4f}"), number(result["p_wilcoxon"], "{:.4f}"),
                    result["note"],
                ]
            )  # fmt: skip
    return rows


def _part_section(part: dict[str, Any], document: dict[str, Any] | None) -> list[str]:
    lines = [f"## {part['part']}", ""]
    if document is None:
        return [*lines, f"No results: the part exited with status {part['status']}.", ""]
    meta = document["meta"]
    lines += [
        f"{meta['data']} · {meta['framework']} {', '.join(meta['backbones'])} · "
        f"{meta['image_size']} px · {meta['epochs']} epochs · seeds {meta['seeds']} · "
        f"balance {meta['config']['balance']} · validation loss "
        f"{meta['config'].get('val_loss', 'plain')}. Full report: [{part['out']}/report.md]"
        f"({part['out']}/report.md); timelines: [{part['out']}/figures/]"
        f"({part['out']}/figures/).",
        "",
    ]
    if meta.get("incomplete"):
        lines += [f"> **INCOMPLETE PART — {meta['incomplete']}.**", ""]
    header = (
        "Strategy|Seeds|LR|"
        + "|".join(f"{METRIC_TITLES[m]} (%)" for m in BASELINE_METRICS)
        + "|Flagged runs|Wall per run (s)|Wall incl. sweep (min)"
    )
    lines += [*table(header, _strategy_rows(document)), ""]
    paired = _paired_rows(document)
    if paired:
        header = "Dynamic vs|Metric|n|Mean (pp)|95 % CI (pp)|p (t-test)|p (Wilcoxon)|Note"
        lines += ["Paired by seed, dynamic − each other strategy:", "", *table(header, paired)]
    return [*lines, ""]


def write_suite_report(
    out_dir: Path, name: str, parts: list[dict[str, Any]], incomplete: str | None = None
) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/suite.json`` from the parts' results.

    Args:
        out_dir: The suite's folder (each part in ``out_dir/<part>``).
        name: The suite's name.
        parts: ``{"part", "status", "wall_s", "out"}`` of every part that ran.
        incomplete: Why the suite stopped early, if it did.
    """
    documents = {}
    for part in parts:
        path = out_dir / part["out"] / "results.json"
        documents[part["part"]] = json.loads(path.read_text()) if path.is_file() else None
    failed = [part["part"] for part in parts if part["status"] != 0]
    if failed and not incomplete:
        incomplete = f"part(s) {', '.join(failed)} did not finish"
    lines = [f"# Suite {name}", ""]
    if incomplete:
        lines += [f"> **INCOMPLETE SUITE — {incomplete}.**", ""]
    rows = [
        [part["part"], part["status"], f"{part['wall_s'] / 60:.1f}",
         f"[report]({part['out']}/report.md)"]
        for part in parts
    ]  # fmt: skip
    lines += ["## Parts", "", *table("Part|Exit status|Wall time (min)|Report", rows), ""]
    lines += [
        "Means are over seeds with the 95 % CI of the t distribution in brackets; the trivial "
        "baselines are scored on each seed's test split. A flagged run is at or below chance or "
        "a trivial predictor on some metric.",
        "",
    ]
    for part in parts:
        lines += _part_section(part, documents[part["part"]])
    report = out_dir / "report.md"
    write_text_atomic(report, "\n".join(lines).rstrip() + "\n")
    write_json_atomic(
        out_dir / "suite.json", {"suite": name, "parts": parts, "incomplete": incomplete}
    )
    return report

"""Paired tests of a finished study, or of the paper's own Tables 3-4, on the command line.

Usage::

    python -m benchmarks.study.results.compare RESULTS.csv   # dynamic vs each other strategy
    python -m benchmarks.study.results.compare --paper       # the paper's paired test, recomputed

Printed differences are in percentage points.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from benchmarks.study.results.stats import (
    METRICS,
    compare_strategies,
    format_seed_summary,
    summarize_seeds,
)

PAPER_TABLES = Path(__file__).with_name("paper_tables.csv")
# Section IV.G of the paper: paired t-test of accuracy over the seven backbones.
PAPER_STATED_ACCURACY = {"mean": 3.18, "sd": 1.23, "t": 3.01, "df": 6, "p": 0.02}
NUMERIC_COLUMNS = ("seed", *METRICS, "epochs", "wall_s", "size_mb", "load_s")


def read_results_csv(path: Path) -> list[dict]:
    """Rows of a study's results.csv with numeric columns converted.

    Args:
        path: The results.csv written by ``benchmarks.study.results.report.write_report``.
    """
    rows = _csv_rows(path)
    required = {"backbone", "strategy", "seed", "accuracy", "macro_f1"}
    if not rows:
        raise ValueError(f"{path} has no result rows")
    missing = required - set(rows[0])
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; has {sorted(rows[0])}")
    for row in rows:
        for column in NUMERIC_COLUMNS:
            if row.get(column) not in (None, ""):
                row[column] = int(row[column]) if column == "seed" else float(row[column])
    return rows


def load_paper_tables(path: Path = PAPER_TABLES) -> list[dict]:
    """The paper's Tables 3-4 as run-like rows (accuracy and F1 converted to fractions).

    Args:
        path: The CSV shipped beside this module (default).
    """
    return [
        {
            "backbone": row["backbone"],
            "strategy": row["strategy"],
            "seed": 0,
            "accuracy": float(row["accuracy_pct"]) / 100.0,
            "macro_f1": float(row["f1_pct"]) / 100.0,
        }
        for row in _csv_rows(path)
    ]


def _csv_rows(path: Path) -> list[dict]:
    # '#' lines carry citations and notes (the paper's tables), not data
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def format_comparison(results: dict, reference: str, other: str) -> str:
    """A plain-text table of one comparison of :func:`compare_strategies` (in points)."""
    lines = [
        f"{'metric':<17} {'n':>3} {'mean':>7} {'SD':>6} {'95% CI':>17} {'t':>7} {'df':>3} "
        f"{'p(t)':>7} {'W':>6} {'p(W)':>7}"
    ]
    for metric, result in results.items():
        ci = f"[{100 * result['ci95_low']:.2f}, {100 * result['ci95_high']:.2f}]"
        lines.append(
            f"{metric:<17} {result['n']:>3} {100 * result['mean']:>7.2f} "
            f"{100 * result['sd']:>6.2f} "
            f"{ci:>17} {result['t']:>7.3f} {result['df']:>3} {result['p_t']:>7.4f} "
            f"{result['wilcoxon_w']:>6.1f} {result['p_wilcoxon']:>7.4f}"
        )
        if result.get("note"):
            lines.append(f"  note: {result['note']}")
    unit = next(iter(results.values()))["unit"]
    lines.append(f"({reference} - {other} in percentage points; one pair per {unit})")
    return "\n".join(lines)


def paper_report(path: Path = PAPER_TABLES) -> str:
    """Recompute the paper's paired test and print it beside the values the paper states."""
    results = compare_strategies(load_paper_tables(path))["traditional"]
    accuracy = results["accuracy"]
    stated = PAPER_STATED_ACCURACY
    implied_t = stated["mean"] / (stated["sd"] / math.sqrt(stated["df"] + 1))
    return "\n".join(
        [
            "Paired tests on the paper's Tables 3-4 (7 backbones, dynamic - traditional):",
            format_comparison(results, "dynamic", "traditional"),
            "",
            f"{'accuracy':<12} {'recomputed':>11} {'paper states':>13}",
            f"{'mean (pp)':<12} {100 * accuracy['mean']:>11.2f} {stated['mean']:>13.2f}",
            f"{'SD (pp)':<12} {100 * accuracy['sd']:>11.2f} {stated['sd']:>13.2f}",
            f"{'t':<12} {accuracy['t']:>11.2f} {stated['t']:>13.2f}",
            f"{'df':<12} {accuracy['df']:>11d} {stated['df']:>13d}",
            f"{'p (t-test)':<12} {accuracy['p_t']:>11.3f} {stated['p']:>13.2f}",
            f"The stated mean and SD imply t = {implied_t:.2f} "
            f"(mean / (SD / sqrt({stated['df'] + 1}))).",
            "The paper states no test for F1; the F1 row above is recomputed from the tables.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study.results.compare",
        description="Paired t-test and Wilcoxon test of dynamic vs each other strategy.",
    )
    parser.add_argument("results", nargs="?", type=Path, help="results.csv of a study")
    parser.add_argument(
        "--paper", action="store_true", help="recompute the test on the paper's Tables 3-4"
    )
    args = parser.parse_args(argv)
    if args.paper == (args.results is not None):
        parser.error("give either RESULTS.csv or --paper")
    if args.paper:
        print(paper_report())
        return 0
    if not args.results.is_file():
        parser.error(f"{args.results} does not exist")
    try:
        runs = read_results_csv(args.results)
    except ValueError as error:
        parser.error(str(error))
    comparisons = compare_strategies(runs)
    if not comparisons:
        parser.error(f"{args.results} has no dynamic runs to compare the others with")
    for other, results in comparisons.items():
        print(f"Paired tests on {args.results}, dynamic vs {other}:")
        print(format_comparison(results, "dynamic", other) + "\n")
    print("Seed summaries (mean ± SD, 95% CI, in %):")
    for row in summarize_seeds(runs):
        cells = [
            f"{metric} {format_seed_summary(row[metric])}" for metric in METRICS if metric in row
        ]
        name = "/".join(part for part in (row["framework"], row["backbone"]) if part)
        print(f"  {name} {row['strategy']} (n={len(row['seeds'])}): " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Statistics of the study: paired tests of dynamic vs traditional and seed summaries.

Command line::

    python -m benchmarks.study.results.stats RESULTS.csv   # paired tests of a study
    python -m benchmarks.study.results.stats --paper       # the same on the paper's Tables 3-4

Metrics are fractions in [0, 1] throughout; printed differences are in percentage points.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

METRICS = ("accuracy", "macro_f1")
PAPER_TABLES = Path(__file__).with_name("paper_tables.csv")
# Section IV.G of the paper: paired t-test of accuracy over the seven backbones.
PAPER_STATED_ACCURACY = {"mean": 3.18, "sd": 1.23, "t": 3.01, "df": 6, "p": 0.02}
NUMERIC_COLUMNS = ("seed", "accuracy", "macro_f1", "epochs", "wall_s", "size_mb", "load_s")


def seed_summary(values) -> dict:
    """Mean ± SD and the 95 % confidence interval of the mean (t distribution).

    Args:
        values: One value per seed.

    Returns:
        ``{"n", "mean", "sd", "ci95_low", "ci95_high"}``; SD and CI are NaN for a single value.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D list of values, got shape {values.shape}")
    count, mean = len(values), float(values.mean())
    if count < 2:
        return {
            "n": count,
            "mean": mean,
            "sd": math.nan,
            "ci95_low": math.nan,
            "ci95_high": math.nan,
        }
    sd = float(values.std(ddof=1))
    half_width = float(scipy_stats.t.ppf(0.975, count - 1)) * sd / math.sqrt(count)
    return {
        "n": count,
        "mean": mean,
        "sd": sd,
        "ci95_low": mean - half_width,
        "ci95_high": mean + half_width,
    }


def format_seed_summary(summary: dict) -> str:
    """A :func:`seed_summary` in percent: ``mean ± SD [95 % CI]`` or ``mean (one seed)``."""
    mean = 100 * summary["mean"]
    if summary["n"] < 2:
        return f"{mean:.2f} (one seed)"
    return (
        f"{mean:.2f} ± {100 * summary['sd']:.2f} "
        f"[{100 * summary['ci95_low']:.2f}, {100 * summary['ci95_high']:.2f}]"
    )


def paired_test(dynamic, traditional) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``dynamic - traditional``.

    Args:
        dynamic: One value per pair (backbone) under the dynamic strategy.
        traditional: The matching values under the traditional strategy.

    Returns:
        ``n``, ``mean`` and ``sd`` of the differences, their 95 % CI, ``t``, ``df``, ``p_t``
        (two-sided, ``scipy.stats.ttest_rel``), ``wilcoxon_w`` and ``p_wilcoxon`` (two-sided,
        ``scipy.stats.wilcoxon``), and ``note`` explaining any NaN.
    """
    dynamic = np.asarray(dynamic, dtype=float)
    traditional = np.asarray(traditional, dtype=float)
    if dynamic.shape != traditional.shape or dynamic.ndim != 1:
        raise ValueError(
            f"paired values need equal 1-D shapes, got {dynamic.shape} and {traditional.shape}"
        )
    differences = dynamic - traditional
    summary = seed_summary(differences) if len(differences) else {"n": 0, "mean": math.nan}
    result = {
        "n": len(differences),
        "mean": summary["mean"],
        "sd": summary.get("sd", math.nan),
        "ci95_low": summary.get("ci95_low", math.nan),
        "ci95_high": summary.get("ci95_high", math.nan),
        "t": math.nan,
        "df": len(differences) - 1,
        "p_t": math.nan,
        "wilcoxon_w": math.nan,
        "p_wilcoxon": math.nan,
        "note": "",
    }
    if len(differences) < 2:
        result["note"] = f"{len(differences)} pair(s): a paired test needs at least 2"
        return result
    if np.all(differences == 0):
        result["note"] = "all differences are zero: no test is defined"
        return result
    with warnings.catch_warnings():
        # Constant non-zero differences give t = ±inf; scipy warns, the value is still right.
        warnings.simplefilter("ignore", RuntimeWarning)
        t_test = scipy_stats.ttest_rel(dynamic, traditional)
    result["t"], result["p_t"] = float(t_test.statistic), float(t_test.pvalue)
    wilcoxon = scipy_stats.wilcoxon(dynamic, traditional)
    result["wilcoxon_w"], result["p_wilcoxon"] = float(wilcoxon.statistic), float(wilcoxon.pvalue)
    return result


def compare_strategies(runs: list[dict]) -> dict:
    """Paired tests of dynamic vs traditional for each metric.

    The pairing unit is the backbone (per framework), each strategy's value averaged over seeds,
    as in the paper. With fewer than two backbones run under both strategies, each seed becomes
    a pair instead, and ``unit`` says so.

    Args:
        runs: Run dicts or results.csv rows with ``backbone``, ``strategy``, ``seed`` and the
            metrics (``framework`` optional).

    Returns:
        ``{metric: paired_test(...) + {"unit", "pairs"}}``.
    """
    by_unit: dict[str, dict[tuple, dict[str, list]]] = {"backbone": {}, "backbone and seed": {}}
    for run in runs:
        backbone = (run.get("framework", ""), run["backbone"])
        for unit, key in (("backbone", backbone), ("backbone and seed", (*backbone, run["seed"]))):
            by_unit[unit].setdefault(key, defaultdict(list))[run["strategy"]].append(run)
    unit = "backbone"
    paired = [key for key, groups in by_unit[unit].items() if len(groups) == 2]
    if len(paired) < 2:
        unit = "backbone and seed"
        paired = [key for key, groups in by_unit[unit].items() if len(groups) == 2]
    results = {}
    for metric in METRICS:
        means = {
            strategy: [
                float(np.mean([float(run[metric]) for run in by_unit[unit][key][strategy]]))
                for key in paired
            ]
            for strategy in ("dynamic", "traditional")
        }
        result = paired_test(means["dynamic"], means["traditional"])
        result["unit"] = unit
        result["pairs"] = ["/".join(str(part) for part in key if part != "") for key in paired]
        results[metric] = result
    return results


def summarize_seeds(runs: list[dict]) -> list[dict]:
    """Seed summary (mean ± SD, 95 % CI) per framework, backbone and strategy.

    Args:
        runs: Run dicts or results.csv rows.

    Returns:
        One dict per group with ``framework``, ``backbone``, ``strategy``, ``seeds`` and a
        :func:`seed_summary` per metric.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run.get("framework", ""), run["backbone"], run["strategy"])].append(run)
    rows = []
    for (framework, backbone, strategy), members in groups.items():
        row = {
            "framework": framework,
            "backbone": backbone,
            "strategy": strategy,
            "seeds": [member["seed"] for member in members],
        }
        for metric in METRICS:
            row[metric] = seed_summary([float(member[metric]) for member in members])
        rows.append(row)
    return rows


def read_results_csv(path: Path) -> list[dict]:
    """Rows of a study's results.csv with numeric columns converted.

    Args:
        path: The results.csv written by ``benchmarks.study.results.report.write_report``.
    """
    rows = _csv_rows(path)
    required = {"backbone", "strategy", "seed", *METRICS}
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


def format_comparison(results: dict) -> str:
    """A plain-text table of :func:`compare_strategies` output (differences in points)."""
    lines = [
        f"{'metric':<10} {'n':>3} {'mean':>7} {'SD':>6} {'95% CI':>17} {'t':>7} {'df':>3} "
        f"{'p(t)':>7} {'W':>6} {'p(W)':>7}"
    ]
    for metric, result in results.items():
        ci = f"[{100 * result['ci95_low']:.2f}, {100 * result['ci95_high']:.2f}]"
        lines.append(
            f"{metric:<10} {result['n']:>3} {100 * result['mean']:>7.2f} "
            f"{100 * result['sd']:>6.2f} "
            f"{ci:>17} {result['t']:>7.3f} {result['df']:>3} {result['p_t']:>7.4f} "
            f"{result['wilcoxon_w']:>6.1f} {result['p_wilcoxon']:>7.4f}"
        )
        if result.get("note"):
            lines.append(f"  note: {result['note']}")
    unit = next(iter(results.values()))["unit"]
    lines.append(f"(dynamic - traditional in percentage points; one pair per {unit})")
    return "\n".join(lines)


def paper_report(path: Path = PAPER_TABLES) -> str:
    """Recompute the paper's paired test and print it beside the values the paper states."""
    results = compare_strategies(load_paper_tables(path))
    accuracy = results["accuracy"]
    stated = PAPER_STATED_ACCURACY
    implied_t = stated["mean"] / (stated["sd"] / math.sqrt(stated["df"] + 1))
    return "\n".join(
        [
            "Paired tests on the paper's Tables 3-4 (7 backbones, dynamic - traditional):",
            format_comparison(results),
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
        prog="python -m benchmarks.study.results.stats",
        description="Paired t-test and Wilcoxon test of dynamic vs traditional fine-tuning.",
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
    print(f"Paired tests on {args.results}:")
    print(format_comparison(compare_strategies(runs)))
    print("\nSeed summaries (mean ± SD, 95% CI, in %):")
    for row in summarize_seeds(runs):
        cells = [f"{metric} {format_seed_summary(row[metric])}" for metric in METRICS]
        name = "/".join(part for part in (row["framework"], row["backbone"]) if part)
        print(f"  {name} {row['strategy']} (n={len(row['seeds'])}): " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

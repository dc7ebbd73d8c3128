"""Statistics of the study: paired tests of dynamic against each other strategy, seed summaries.

Metrics are fractions in [0, 1] throughout. ``python -m benchmarks.study.results.compare`` prints
them for a results.csv or the paper's tables.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import numpy as np
from scipy import stats as scipy_stats

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
REFERENCE = "dynamic"


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


def paired_test(reference, other) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``reference - other``.

    Args:
        reference: One value per pair (backbone, or seed) under the reference strategy.
        other: The matching values under the strategy compared with it.

    Returns:
        ``n``, ``mean`` and ``sd`` of the differences, their 95 % CI, ``t``, ``df``, ``p_t``
        (two-sided, ``scipy.stats.ttest_rel``), ``wilcoxon_w`` and ``p_wilcoxon`` (two-sided,
        ``scipy.stats.wilcoxon``), and ``note`` explaining any NaN.
    """
    reference = np.asarray(reference, dtype=float)
    other = np.asarray(other, dtype=float)
    if reference.shape != other.shape or reference.ndim != 1:
        raise ValueError(
            f"paired values need equal 1-D shapes, got {reference.shape} and {other.shape}"
        )
    differences = reference - other
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
        t_test = scipy_stats.ttest_rel(reference, other)
    result["t"], result["p_t"] = float(t_test.statistic), float(t_test.pvalue)
    wilcoxon = scipy_stats.wilcoxon(reference, other)
    result["wilcoxon_w"], result["p_wilcoxon"] = float(wilcoxon.statistic), float(wilcoxon.pvalue)
    return result


def compare_strategies(runs: list[dict], reference: str = REFERENCE) -> dict:
    """Paired tests of ``reference`` against every other strategy, for each metric.

    The pairing unit is the backbone (per framework), each strategy's value averaged over seeds,
    as in the paper. With fewer than two backbones run under both strategies of a comparison,
    each (backbone, seed) becomes a pair instead, and ``unit`` says so. Only metrics every run
    carries are tested (the paper's tables have no balanced accuracy).

    Args:
        runs: Run dicts or results.csv rows with ``backbone``, ``strategy``, ``seed`` and the
            metrics (``framework`` optional).
        reference: The strategy every other one is compared with. Defaults to ``"dynamic"``.

    Returns:
        ``{other_strategy: {metric: paired_test(...) + {"unit", "pairs"}}}`` in the order the
        other strategies first appear; empty without ``reference`` runs.
    """
    strategies = list(dict.fromkeys(run["strategy"] for run in runs))
    if reference not in strategies:
        return {}
    metrics = [metric for metric in METRICS if all(metric in run for run in runs)]
    return {
        other: _compare_pair(runs, reference, other, metrics)
        for other in strategies
        if other != reference
    }


def _compare_pair(runs: list[dict], reference: str, other: str, metrics: list[str]) -> dict:
    by_unit: dict[str, dict[tuple, dict[str, list]]] = {"backbone": {}, "backbone and seed": {}}
    for run in runs:
        if run["strategy"] not in (reference, other):
            continue
        backbone = (run.get("framework", ""), run["backbone"])
        for unit, key in (("backbone", backbone), ("backbone and seed", (*backbone, run["seed"]))):
            by_unit[unit].setdefault(key, defaultdict(list))[run["strategy"]].append(run)
    unit = "backbone"
    paired = [key for key, groups in by_unit[unit].items() if len(groups) == 2]
    if len(paired) < 2:
        unit = "backbone and seed"
        paired = [key for key, groups in by_unit[unit].items() if len(groups) == 2]
    results = {}
    for metric in metrics:
        means = {
            strategy: [
                float(np.mean([float(run[metric]) for run in by_unit[unit][key][strategy]]))
                for key in paired
            ]
            for strategy in (reference, other)
        }
        result = paired_test(means[reference], means[other])
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
            if all(metric in member for member in members):
                row[metric] = seed_summary([float(member[metric]) for member in members])
        rows.append(row)
    return rows

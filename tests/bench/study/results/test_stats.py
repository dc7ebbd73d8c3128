"""Paired tests and seed summaries against scipy and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks.study.results.stats import (
    compare_strategies,
    paired_test,
    seed_summary,
    summarize_seeds,
)

# differences 0.01, 0.03, 0.01, 0.04: mean 0.0225, SD 0.015, t = 0.0225 / (0.015 / 2) = 3
DYNAMIC = [0.81, 0.85, 0.80, 0.90]
TRADITIONAL = [0.80, 0.82, 0.79, 0.86]


def test_paired_t_by_hand():
    result = paired_test(DYNAMIC, TRADITIONAL)
    assert result["mean"] == pytest.approx(0.0225)
    assert result["sd"] == pytest.approx(0.015)
    assert result["t"] == pytest.approx(3.0)
    assert result["df"] == 3
    assert result["p_t"] == pytest.approx(2 * scipy_stats.t.sf(3.0, 3))  # 0.0577
    half_width = scipy_stats.t.ppf(0.975, 3) * 0.015 / 2
    assert result["ci95_low"] == pytest.approx(0.0225 - half_width)


def test_paired_tests_match_scipy_directly():
    rng = np.random.default_rng(0)
    traditional = rng.uniform(0.6, 0.8, 7)
    dynamic = traditional + rng.normal(0.03, 0.02, 7)
    result = paired_test(dynamic, traditional)
    expected_t = scipy_stats.ttest_rel(dynamic, traditional)
    expected_w = scipy_stats.wilcoxon(dynamic, traditional)
    assert result["t"] == pytest.approx(expected_t.statistic)
    assert result["p_t"] == pytest.approx(expected_t.pvalue)
    assert result["wilcoxon_w"] == pytest.approx(expected_w.statistic)
    assert result["p_wilcoxon"] == pytest.approx(expected_w.pvalue)


def test_degenerate_pairs_give_nan_with_a_note():
    single = paired_test([0.9], [0.8])
    assert math.isnan(single["t"]) and "needs at least 2" in single["note"]
    equal = paired_test([0.5, 0.6], [0.5, 0.6])
    assert math.isnan(equal["p_wilcoxon"]) and "all differences are zero" in equal["note"]
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        paired_test([0.1, 0.2], [0.1])


def test_seed_summary_by_hand():
    summary = seed_summary([1.0, 2.0, 3.0])
    half_width = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * SD 1 / sqrt(3)
    assert summary["mean"] == 2.0 and summary["sd"] == pytest.approx(1.0)
    assert summary["ci95_low"] == pytest.approx(2.0 - half_width)
    assert summary["ci95_high"] == pytest.approx(2.0 + half_width)
    assert math.isnan(seed_summary([0.7])["sd"])


def _runs(backbones, seeds, gain):
    runs = []
    for offset, backbone in enumerate(backbones):
        for seed in seeds:
            base = 0.7 + 0.02 * offset + 0.001 * seed
            for strategy, value in (("traditional", base), ("dynamic", base + gain[offset])):
                runs.append(
                    {
                        "backbone": backbone,
                        "strategy": strategy,
                        "seed": seed,
                        "accuracy": value,
                        "macro_f1": value - 0.1,
                    }
                )
    return runs


def test_compare_strategies_pairs_backbones_averaged_over_seeds():
    results = compare_strategies(_runs(["a", "b", "c"], [0, 1], gain=[0.01, 0.03, 0.05]))
    accuracy = results["traditional"]["accuracy"]
    assert accuracy["unit"] == "backbone" and accuracy["n"] == 3
    assert accuracy["mean"] == pytest.approx(0.03) and accuracy["sd"] == pytest.approx(0.02)
    assert accuracy["pairs"] == ["a", "b", "c"]


def test_single_backbone_falls_back_to_seed_pairs():
    results = compare_strategies(_runs(["only"], [0, 1, 2], gain=[0.02]))
    assert results["traditional"]["macro_f1"]["unit"] == "backbone and seed"
    assert results["traditional"]["macro_f1"]["n"] == 3


def test_dynamic_is_compared_with_every_other_strategy_separately():
    runs = _runs(["only"], [0, 1, 2], gain=[0.02])
    for run in [r for r in runs if r["strategy"] == "traditional"]:
        runs.append({**run, "strategy": "full", "accuracy": run["accuracy"] - 0.05})
    results = compare_strategies(runs)
    assert list(results) == ["traditional", "full"]
    assert results["traditional"]["accuracy"]["mean"] == pytest.approx(0.02)
    assert results["full"]["accuracy"]["mean"] == pytest.approx(0.07)
    assert "balanced_accuracy" not in results["full"]  # only metrics every run carries
    assert compare_strategies([r for r in runs if r["strategy"] != "dynamic"]) == {}


def test_seed_summaries_per_backbone_and_strategy():
    rows = summarize_seeds(_runs(["a"], [0, 1], gain=[0.1]))
    assert [(row["strategy"], row["seeds"]) for row in rows] == [
        ("traditional", [0, 1]),
        ("dynamic", [0, 1]),
    ]
    assert rows[1]["accuracy"]["mean"] == pytest.approx(0.8005)

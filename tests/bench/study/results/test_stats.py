"""Paired tests and seed summaries against scipy and hand computation; the --paper CLI."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks.study.results.stats import (
    compare_strategies,
    load_paper_tables,
    main,
    paired_test,
    read_results_csv,
    seed_summary,
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
    accuracy = results["accuracy"]
    assert accuracy["unit"] == "backbone" and accuracy["n"] == 3
    assert accuracy["mean"] == pytest.approx(0.03) and accuracy["sd"] == pytest.approx(0.02)
    assert accuracy["pairs"] == ["a", "b", "c"]


def test_single_backbone_falls_back_to_seed_pairs():
    results = compare_strategies(_runs(["only"], [0, 1, 2], gain=[0.02]))
    assert results["macro_f1"]["unit"] == "backbone and seed"
    assert results["macro_f1"]["n"] == 3


def test_paper_tables_recompute_the_stated_accuracy_gain():
    rows = load_paper_tables()
    assert len(rows) == 14
    accuracy = compare_strategies(rows)["accuracy"]
    # Table 4 - Table 3 accuracy: 0.2, 1.3, 6.3, 1.8, 3.4, 6.9, 2.4 points; mean 22.3 / 7.
    assert 100 * accuracy["mean"] == pytest.approx(22.3 / 7)
    assert accuracy["df"] == 6 and accuracy["p_t"] < 0.05


def test_cli_paper_prints_recomputed_beside_stated(capsys):
    assert main(["--paper"]) == 0
    output = capsys.readouterr().out
    assert re.search(r"mean \(pp\)\s+3\.19\s+3\.18", output)  # recomputed beside stated
    assert re.search(r"p \(t-test\)\s+0\.016\s+0\.02", output)
    assert re.search(r"SD \(pp\)\s+2\.53\s+1\.23", output)


def test_cli_on_results_csv_and_usage_errors(tmp_path, capsys):
    path = tmp_path / "results.csv"
    runs = _runs(["a", "b"], [0, 1], gain=[0.01, 0.02])
    lines = ["framework,backbone,strategy,seed,accuracy,macro_f1"]
    lines += [
        f"torch,{r['backbone']},{r['strategy']},{r['seed']},{r['accuracy']},{r['macro_f1']}"
        for r in runs
    ]
    path.write_text("\n".join(lines) + "\n")
    assert read_results_csv(path)[0]["seed"] == 0
    assert main([str(path)]) == 0
    assert "one pair per backbone" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([])
    (tmp_path / "bad.csv").write_text("backbone,seed\nx,0\n")
    with pytest.raises(ValueError, match=r"lacks columns \['accuracy', 'macro_f1', 'strategy'\]"):
        read_results_csv(tmp_path / "bad.csv")

"""The comparison command line: a study's results.csv and the paper's own Tables 3-4."""

from __future__ import annotations

import re

import pytest

from benchmarks.study.results.compare import load_paper_tables, main, read_results_csv
from benchmarks.study.results.stats import compare_strategies


def test_paper_tables_recompute_the_stated_accuracy_gain():
    rows = load_paper_tables()
    assert len(rows) == 14
    accuracy = compare_strategies(rows)["traditional"]["accuracy"]
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
    lines = ["framework,backbone,strategy,seed,accuracy,balanced_accuracy,macro_f1"]
    for backbone, gain in (("a", 0.01), ("b", 0.02)):
        for seed in (0, 1):
            for strategy, value in (("traditional", 0.7), ("full", 0.68), ("dynamic", 0.7 + gain)):
                lines.append(
                    f"torch,{backbone},{strategy},{seed},{value},{value - 0.2},{value - 0.1}"
                )
    path.write_text("\n".join(lines) + "\n")
    assert read_results_csv(path)[0]["seed"] == 0
    assert main([str(path)]) == 0
    output = capsys.readouterr().out
    assert "dynamic vs traditional" in output and "dynamic vs full" in output
    assert "one pair per backbone" in output
    with pytest.raises(SystemExit):
        main([])
    (tmp_path / "bad.csv").write_text("backbone,seed\nx,0\n")
    with pytest.raises(ValueError, match=r"lacks columns \['accuracy', 'macro_f1', 'strategy'\]"):
        read_results_csv(tmp_path / "bad.csv")

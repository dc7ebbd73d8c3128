"""write_report: every output file exists and parses; banners, baselines beside runs; bad runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fake_runs import fake_run

from benchmarks.study.results.compare import main as compare_main
from benchmarks.study.results.markdown import SYNTHETIC_BANNER
from benchmarks.study.results.report import REQUIRED_RUN_KEYS, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    rng = np.random.default_rng(0)
    runs = [
        fake_run(backbone, strategy, 0, rng, hit_rate=0.0 if backbone == "resnet50" else 0.75)
        for backbone in ("mobilenet_v2", "resnet50")
        for strategy in ("traditional", "dynamic")
    ]
    meta = {
        "framework": "torch",
        "data": "phantom",
        "synthetic": True,
        "seeds": [0],
        "split_notes": ["seed 0: patient-level split"],
        "environment": {"numpy": "x"},
    }
    out_dir = tmp_path_factory.mktemp("study")
    return out_dir, runs, write_report(out_dir, runs, meta)


def test_results_csv_has_one_row_per_run_and_fractions(study):
    out_dir, runs, _ = study
    with (out_dir / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(runs)
    for column in REQUIRED_RUN_KEYS:
        assert column in rows[0]
    assert all(0.0 <= float(row["balanced_accuracy"]) <= 1.0 for row in rows)
    assert [row["num_unfreeze_events"] for row in rows] == ["0", "1", "0", "1"]
    assert rows[0]["num_groups"] == "" and rows[1]["top_n"] == ""
    assert [row["unfrozen_lr_ratio"] for row in rows] == ["", "1.0", "", "1.0"]
    assert rows[0]["sanity"] == "" and "at or below chance" in rows[2]["sanity"]


def test_results_json_is_strict_json_with_meta_and_statistics(study):
    out_dir, runs, _ = study

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads((out_dir / "results.json").read_text(), parse_constant=reject)
    assert document["meta"]["data"] == "phantom"
    assert len(document["runs"]) == len(runs)
    paired = document["statistics"]["paired"]
    assert list(paired) == ["traditional"]
    assert paired["traditional"]["balanced_accuracy"]["n"] == 2
    assert document["runs"][2]["baselines"]["majority"]["answers"] == "always 'Pneumonia'"


def test_markdown_puts_the_baselines_beside_the_runs_and_warns(study):
    _, runs, report = study
    text = report.read_text()
    assert report.name == "report.md"
    assert text.count(SYNTHETIC_BANNER) == 2  # top and bottom
    assert "None" not in text
    warning = text.split("> **WARNING: 2 of 4 runs")[1].split("## Setup")[0]
    assert "torch resnet50 traditional seed 0" in warning and "mobilenet_v2" not in warning
    per_run = text.split("## Per run")[1].split("## Paired tests")[0]
    assert "Recall Atelectasis (%)" in per_run
    # each run with the rates it trained with, the unfrozen groups' ratio where it has one
    assert "| mobilenet_v2 traditional (lr 0.001) |" in per_run
    assert "| mobilenet_v2 dynamic (lr 0.001, unfrozen × 1) |" in per_run
    majority = runs[0]["baselines"]["majority"]
    assert (
        f"| *majority class* (always 'Pneumonia') | {100 * majority['accuracy']:.1f} |" in per_run
    )
    assert "| *prior sampling*" in per_run and "| *chance (1/3)* | 33.3 | 33.3 |" in per_run
    assert "scipy.stats.ttest_rel" in text and "Dynamic vs" in text
    assert "| mobilenet_v2 | traditional | 1 |" in text  # per-strategy summary, one seed


def test_figures_are_png_files_and_linked(study):
    out_dir, runs, report = study
    figures = sorted((out_dir / "figures").glob("*.png"))
    names = {path.name for path in figures}
    assert {"accuracy_by_backbone.png", "macro_f1_by_backbone.png", "confusion_best.png"} <= names
    assert len([name for name in names if name.startswith("timeline_")]) == len(runs)
    for path in figures:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert f"figures/{path.name}" in report.read_text()


def test_compare_cli_reads_the_written_csv(study, capsys):
    out_dir, _, _ = study
    assert compare_main([str(out_dir / "results.csv")]) == 0
    output = capsys.readouterr().out
    assert "dynamic vs traditional" in output and "balanced_accuracy" in output


def test_real_data_report_has_no_synthetic_banner_and_says_when_nothing_compares(
    tmp_path,
):
    run = fake_run("vgg16", "dynamic", 0, np.random.default_rng(1))
    run.update(synthetic=False, timeline=[])
    text = write_report(
        tmp_path, [run], {"data": "covid_cxr_128.npz", "synthetic": False}
    ).read_text()
    assert "SYNTHETIC" not in text
    assert "no other strategy: nothing to compare" in text


def test_an_incomplete_study_carries_the_banner_top_and_bottom(tmp_path):
    run = fake_run("vgg16", "dynamic", 0, np.random.default_rng(1))
    meta = {"synthetic": True, "incomplete": "interrupted after 1 of 4 runs"}
    text = write_report(tmp_path, [run], meta).read_text()
    assert text.count("> **INCOMPLETE STUDY — interrupted after 1 of 4 runs.**") == 2
    assert text.index("INCOMPLETE") < text.index("## Setup")


def test_bad_runs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        write_report(tmp_path, [], {})
    with pytest.raises(ValueError, match=r"run 0 lacks keys \['load_s'\]"):
        write_report(tmp_path, [{key: 0 for key in REQUIRED_RUN_KEYS if key != "load_s"}], {})
    run = fake_run("vgg16", "dynamic", 0, np.random.default_rng(2))
    run["strategy"] = "gradual"
    with pytest.raises(ValueError, match="strategy 'gradual'"):
        write_report(tmp_path, [run], {})
    assert not list(tmp_path.iterdir())  # nothing written for a refused report

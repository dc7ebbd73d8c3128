"""write_report: every output file exists and parses; the synthetic banner; bad runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks.study.results.metrics import classification_metrics
from benchmarks.study.results.report import REQUIRED_RUN_KEYS, SYNTHETIC_BANNER, write_report
from benchmarks.study.results.stats import main as stats_main

CLASS_NAMES = ["Pneumonia", "COVID-19", "Atelectasis"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(backbone: str, strategy: str, seed: int, rng) -> dict:
    truth = rng.integers(0, 3, 40)
    predicted = np.where(rng.random(40) < 0.75, truth, rng.integers(0, 3, 40))
    dynamic = strategy == "dynamic"
    events = [{"epoch": 3, "groups": [5, 6], "num_unfrozen": 2, "lr": 1e-4}] if dynamic else []
    timeline = [
        {
            "epoch": epoch,
            "train_loss": 1.0 / (epoch + 1),
            "val_loss": 1.1 / (epoch + 1),
            "lr": 1e-3 if epoch < 3 else 1e-4,
            "num_unfrozen": 0 if epoch < 3 else 2,
        }
        for epoch in range(6)
    ]
    return {
        "framework": "torch",
        "backbone": backbone,
        "strategy": strategy,
        "seed": seed,
        "weights": "none (random init)",
        "data": "phantom",
        "synthetic": True,
        "image_size": 32,
        **classification_metrics(truth, predicted, CLASS_NAMES),
        "class_names": CLASS_NAMES,
        "epochs": 6,
        "best_epoch": 4,
        "wall_s": 1.25,
        "size_mb": 3.5,
        "load_s": 0.01,
        "top_n": None if dynamic else 5,
        "num_groups": 6 if dynamic else None,
        "unfreeze_events": events,
        "timeline": timeline,
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    rng = np.random.default_rng(0)
    runs = [
        _run(backbone, strategy, 0, rng)
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
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    assert [row["num_unfreeze_events"] for row in rows] == ["0", "1", "0", "1"]
    assert rows[0]["num_groups"] == "" and rows[1]["top_n"] == ""


def test_results_json_is_strict_json_with_meta_and_statistics(study):
    out_dir, runs, _ = study

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads((out_dir / "results.json").read_text(), parse_constant=reject)
    assert document["meta"]["data"] == "phantom"
    assert len(document["runs"]) == len(runs)
    assert document["statistics"]["paired"]["accuracy"]["n"] == 2


def test_markdown_names_every_backbone_and_carries_the_banner(study):
    _, _, report = study
    text = report.read_text()
    assert report.name == "report.md"
    assert "mobilenet_v2" in text and "resnet50" in text
    assert text.count(SYNTHETIC_BANNER) == 2  # top and bottom
    assert "Table 3 layout" in text and "Table 4 layout" in text
    assert "scipy.stats.ttest_rel" in text
    assert "None" not in text
    traditional = text.split("Table 3 layout")[1].split("Table 4 layout")[0]
    assert "| 5 | 6.0 |" in traditional  # top_n then epochs


def test_figures_are_png_files_and_linked(study):
    out_dir, runs, report = study
    figures = sorted((out_dir / "figures").glob("*.png"))
    names = {path.name for path in figures}
    assert {"accuracy_by_backbone.png", "macro_f1_by_backbone.png", "confusion_best.png"} <= names
    assert len([name for name in names if name.startswith("timeline_")]) == len(runs)
    for path in figures:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert f"figures/{path.name}" in report.read_text()


def test_stats_cli_reads_the_written_csv(study, capsys):
    out_dir, _, _ = study
    assert stats_main([str(out_dir / "results.csv")]) == 0
    assert "mobilenet_v2" in capsys.readouterr().out


def test_real_data_report_has_no_banner(tmp_path):
    run = _run("vgg16", "dynamic", 0, np.random.default_rng(1))
    run.update(synthetic=False, timeline=[])
    text = write_report(
        tmp_path, [run], {"data": "covid_cxr_128.npz", "synthetic": False}
    ).read_text()
    assert "SYNTHETIC" not in text
    assert "No traditional runs." in text
    assert "0 pair(s): a paired test needs at least 2" in text


def test_bad_runs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        write_report(tmp_path, [], {})
    with pytest.raises(ValueError, match=r"run 0 lacks keys \['load_s'\]"):
        write_report(tmp_path, [{key: 0 for key in REQUIRED_RUN_KEYS if key != "load_s"}], {})
    run = _run("vgg16", "dynamic", 0, np.random.default_rng(2))
    run["strategy"] = "gradual"
    with pytest.raises(ValueError, match="strategy 'gradual'"):
        write_report(tmp_path, [run], {})

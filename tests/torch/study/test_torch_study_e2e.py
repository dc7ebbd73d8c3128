"""The study end to end on PyTorch: CLI on a tiny phantom set, outputs, flag validation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from study_helpers import TINY_BACKBONE, TINY_STUDY, read_rows, run_tiny_study

from benchmarks.study.config import DEFAULT_STRATEGIES
from benchmarks.study.results.repeatability import differences

REPO_ROOT = Path(__file__).resolve().parents[3]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.study --framework torch ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.study", "--framework", "torch", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_runs_every_strategy_and_writes_the_full_report(tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = run_cli(
        "--backbones", "efficientnet_lite0", "--weights", "imagenet", *TINY_STUDY, "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Report: {out / 'report.md'}" in result.stdout

    rows = read_rows(out)
    assert [row["strategy"] for row in rows] == list(DEFAULT_STRATEGIES)
    for row in rows:
        assert row["framework"] == "torch" and row["backbone"] == "efficientnet_lite0"
        assert row["weights"] == "imagenet"  # the package's real ImageNet file
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and 0.0 <= float(row["macro_f1"]) <= 1.0
        assert 1 <= int(row["epochs"]) <= 3
        assert float(row["size_mb"]) > 1.0 and float(row["load_s"]) > 0.0

    document = json.loads((out / "results.json").read_text())
    meta = document["meta"]
    assert meta["synthetic"] is True and meta["framework"] == "torch"
    assert meta["seeds"] == [0] and meta["epochs"] == 3
    assert meta["environment"]["packages"]["torch"] is not None
    runs = {run["strategy"]: run for run in document["runs"]}
    depths = {name: (run["top_n"], run["num_groups"]) for name, run in runs.items()}
    assert depths == {
        "linear_probe": (0, None),
        "full": (49, None),
        "traditional": (10, None),
        "two_stage": (None, 1),
        "dynamic": (None, 49),
    }
    for run in runs.values():
        assert [e["epoch"] for e in run["timeline"]] == list(range(1, run["epochs"] + 1))
        assert 1 <= run["best_epoch"] <= run["epochs"]
        assert (out / run["model_path"]).is_file()
        assert len(run["confusion_normalized"]) == len(run["class_names"]) == 7
        assert run["baselines"]["majority"]["answers"] == "always 'Pneumonia'"
        rate = meta["config"]["strategy_lr"].get(run["strategy"], meta["config"]["lr"])
        assert run["lr"] == rate == (1e-4 if run["strategy"] == "full" else 1e-3)
        assert run["unfrozen_lr_ratio"] == (None if run["num_groups"] is None else 1.0)
    # patience 1: every epoch without improvement unfreezes 3 more groups at lr x0.9
    dynamic = runs["dynamic"]
    for event in dynamic["unfreeze_events"]:
        assert len(event["groups"]) == 3 and event["groups"][-1] <= 48
    assert [e["num_unfrozen"] for e in dynamic["unfreeze_events"]] == [
        3 * (i + 1) for i in range(len(dynamic["unfreeze_events"]))
    ]

    report = (out / "report.md").read_text()
    assert re.search(r"synthetic", report, re.IGNORECASE)
    for strategy in DEFAULT_STRATEGIES:
        assert f"| efficientnet_lite0 | {strategy} | 1 |" in report  # per-strategy summary
    assert "| *majority class* (always 'Pneumonia') |" in report
    figures = re.findall(r"\((figures/[^)]+\.png)\)", report)
    assert len(figures) >= 4
    for figure in figures:
        assert (out / figure).stat().st_size > 1000


def test_the_same_command_gives_identical_numbers_and_runs_do_not_depend_on_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("first", "second"):
        assert run_tiny_study(TINY_BACKBONE, "none", tmp_path / name) == 0
    alone = tmp_path / "alone"
    assert run_tiny_study(TINY_BACKBONE, "none", alone, "--strategies", "two_stage") == 0
    documents = {
        name: json.loads((tmp_path / name / "results.json").read_text())
        for name in ("first", "second", "alone")
    }
    assert differences(documents["first"]["runs"], documents["second"]["runs"]) == []
    two_stage = [run for run in documents["first"]["runs"] if run["strategy"] == "two_stage"]
    assert differences(two_stage, documents["alone"]["runs"]) == []
    assert documents["first"]["meta"]["determinism"]["framework"]["deterministic_algorithms"]
    report = (tmp_path / "first" / "report.md").read_text()
    assert "## Determinism" in report and "the sampler's epochs" in report


def test_registered_backbone_runs_in_process(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    status = run_tiny_study(TINY_BACKBONE, "none", out)
    assert status == 0
    rows = read_rows(out)
    assert {row["weights"] for row in rows} == {"none (random init)"}
    document = json.loads((out / "results.json").read_text())
    dynamic = next(r for r in document["runs"] if r["strategy"] == "dynamic")
    assert dynamic["num_groups"] == 2  # two convolutions, each carrying its BatchNorm

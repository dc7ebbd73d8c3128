"""Suites: the flags the parts get, the parts run one by one, the report from their results."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from fake_runs import fake_run

from benchmarks.study import cli, suite
from benchmarks.study.config import StudyConfigError
from benchmarks.study.results.report import write_results

PARTS = ("evidence-covid", "evidence-pneumonia")


def _fake_part(out, failing=False):
    """What a part leaves: results.json of two strategies over three seeds."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(len(str(out)))
    runs = [
        fake_run("mobilenet_v2", strategy, seed, rng, hit_rate=0.5 if strategy == "full" else 0.8)
        for seed in (0, 1, 2)
        for strategy in ("full", "dynamic")
    ]
    meta = {
        "data": "x.npz",
        "framework": "keras",
        "backbones": ["mobilenet_v2"],
        "image_size": 96,
        "epochs": 30,
        "seeds": [0, 1, 2],
        "config": {"balance": "tempered"},
    }
    if failing:
        meta["incomplete"] = "interrupted (Ctrl-C) after 6 of 10 runs"
    write_results(out, runs, meta)


def test_the_parts_get_every_flag_but_preset_and_out():
    given = ["--preset", "evidence", "--seeds", "0,1", "--out=runs/x", "--epochs", "2"]
    assert cli._suite_flags(given) == ["--seeds", "0,1", "--epochs", "2"]
    suite.check_suite_flags("evidence", ["--seeds", "0"])
    with pytest.raises(StudyConfigError, match="drop --data, --framework"):
        suite.check_suite_flags("evidence", ["--framework", "torch", "--data=x.npz"])


def test_run_suite_runs_each_part_into_its_folder_and_reports_them(tmp_path, monkeypatch):
    commands = []

    def call(command):
        commands.append(command)
        out = tmp_path / "suite" / command[command.index("--out") + 1].split("/")[-1]
        _fake_part(out, failing=out.name == PARTS[1])
        return 130 if out.name == PARTS[1] else 0

    monkeypatch.setattr(subprocess, "call", call)
    report, parts = suite.run_suite("evidence", tmp_path / "suite", ["--seeds", "0,1,2"])
    assert [c[c.index("--preset") + 1] for c in commands] == list(PARTS)
    assert all(c[-4:-2] == ["--seeds", "0,1,2"] for c in commands)
    assert [(p["part"], p["status"]) for p in parts] == [(PARTS[0], 0), (PARTS[1], 130)]
    text = report.read_text()
    assert "> **INCOMPLETE SUITE — part(s) evidence-pneumonia did not finish.**" in text
    assert "> **INCOMPLETE PART — interrupted (Ctrl-C) after 6 of 10 runs.**" in text
    covid = text.split("## evidence-covid")[1].split("## evidence-pneumonia")[0]
    assert "| full | 3 | 0.001 |" in covid and "| dynamic | 3 | 0.001 |" in covid
    assert "| *majority class* | 3 | – |" in covid and "| *prior sampling* | 3 | – |" in covid
    assert "| full | Bal. ACC | 3 |" in covid  # paired by seed, dynamic - full
    assert "(evidence-covid/figures/)" in covid
    assert json.loads((tmp_path / "suite" / "suite.json").read_text())["parts"][1]["status"] == 130


def test_a_suite_stopped_before_any_part_leaves_no_folder(tmp_path, monkeypatch):
    def interrupted(command):
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess, "call", interrupted)
    with pytest.raises(KeyboardInterrupt):
        suite.run_suite("evidence", tmp_path / "suite", [])
    assert not (tmp_path / "suite").exists()

"""Comparing two studies' results.json: every field but the timings, exactly."""

from __future__ import annotations

import copy
import json

from benchmarks.study.results.repeatability import differences, main

RUN = {
    "framework": "torch",
    "backbone": "b",
    "strategy": "dynamic",
    "seed": 0,
    "lr": 0.001,
    "accuracy": 0.5,
    "timeline": [{"epoch": 1, "val_loss": 0.7}],
    "wall_s": 3.0,
    "load_s": 0.1,
}


def test_identical_runs_differ_only_in_time():
    other = {**RUN, "wall_s": 9.0, "load_s": 0.5}
    assert differences([RUN], [other]) == []


def test_a_changed_timeline_or_a_missing_run_is_reported():
    changed = copy.deepcopy(RUN)
    changed["timeline"][0]["val_loss"] = 0.70000001
    (found,) = differences([RUN], [changed])
    assert found.startswith("run ('torch', 'b', 'dynamic', 0, 0.001): timeline differs")
    extra = {**RUN, "seed": 1}
    assert differences([RUN], [RUN, extra]) == [
        "run ('torch', 'b', 'dynamic', 1, 0.001) is in only one study"
    ]


def test_cli_exit_status_says_whether_the_studies_match(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"runs": [RUN]}))
    second.write_text(json.dumps({"runs": [{**RUN, "accuracy": 0.25}]}))
    assert main([str(first), str(first)]) == 0
    assert "identical: 1 runs" in capsys.readouterr().out
    assert main([str(first), str(second)]) == 1
    assert "accuracy differs (0.5 vs 0.25)" in capsys.readouterr().out

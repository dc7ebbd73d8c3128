"""The learning-rate sweep end to end on PyTorch: trials on validation only, choice applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import TINY_BACKBONE, run_tiny_study

from benchmarks.study.runners import torch_runner


def test_each_strategy_runs_with_the_rate_its_validation_trials_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_passes = []
    real_evaluate = torch_runner.evaluate

    def evaluate(model, data, split, *args, **kwargs):
        test_passes.append(split is data.test)
        return real_evaluate(model, data, split, *args, **kwargs)

    monkeypatch.setattr(torch_runner, "evaluate", evaluate)
    out = tmp_path / "swept"
    status = run_tiny_study(
        TINY_BACKBONE, "none", out, "--strategies", "full,dynamic", "--sweep", "lr=1e-3,3e-2"
    )
    assert status == 0
    assert sum(test_passes) == 2  # the two runs; the four trials never saw the test split
    document = json.loads((out / "results.json").read_text())
    sweep = document["meta"]["sweep"]
    assert sweep["grid"] == {"lr": [1e-3, 3e-2]}
    for result, run in zip(sweep["results"], document["runs"], strict=True):
        assert [trial["setting"] for trial in result["trials"]] == [{"lr": 1e-3}, {"lr": 3e-2}]
        best = min(result["trials"], key=lambda trial: trial["val_loss"])
        assert result["chosen"] == best["setting"] and run["lr"] == best["setting"]["lr"]
        # the run on the sweep's seed repeats the chosen trial exactly
        assert run["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    report = (out / "report.md").read_text()
    assert "## Sweep on the validation split" in report and "**chosen**" in report

"""The learning-rate sweep end to end on PyTorch: trials on validation only, choice applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
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


def test_a_strategys_own_rate_is_its_runs_and_a_swept_rate_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = []

    class Adam(torch.optim.Adam):
        def __init__(self, params, lr, **kwargs):
            built.append(lr)
            super().__init__(params, lr=lr, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", Adam)
    out = tmp_path / "rates"
    flags = ("--strategies", "full,dynamic", "--lr", "1e-3", "--strategy-lr", "full=3e-2")
    assert run_tiny_study(TINY_BACKBONE, "none", out, *flags) == 0
    assert built == [3e-2, 1e-3]  # the optimizers the two runs trained with
    document = json.loads((out / "results.json").read_text())
    assert {run["strategy"]: run["lr"] for run in document["runs"]} == {
        "full": 3e-2,
        "dynamic": 1e-3,
    }
    assert document["meta"]["config"]["strategy_lr"] == {"full": 3e-2}
    swept = tmp_path / "swept"
    assert run_tiny_study(TINY_BACKBONE, "none", swept, *flags, "--sweep", "lr=1e-4,1e-3") == 0
    document = json.loads((swept / "results.json").read_text())
    for result, run in zip(document["meta"]["sweep"]["results"], document["runs"], strict=True):
        assert run["lr"] == result["chosen"]["lr"] in (1e-4, 1e-3)

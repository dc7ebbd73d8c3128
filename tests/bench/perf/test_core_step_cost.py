"""The micro-benchmark script runs and prints its figures (timings themselves are not checked)."""

from __future__ import annotations

import re

import pytest

from benchmarks.perf import core_step_cost


def test_benchmark_prints_step_and_state_dict_figures(capsys: pytest.CaptureFixture[str]) -> None:
    core_step_cost.main(["--repeat", "3", "--epochs", "12"])
    out = capsys.readouterr().out
    assert re.search(r"step\(\)\s+\d+\.\d+ µs", out), out
    assert len(re.findall(r"state_dict\(\)\s+\d+\.\d+ µs", out)) == 2, out


def test_benchmark_curve_runs_the_scheduler_to_its_stop() -> None:
    scheduler = core_step_cost.run_until_stop(core_step_cost.validation_curve(100))
    assert scheduler.stopped and scheduler.num_unfrozen > 0

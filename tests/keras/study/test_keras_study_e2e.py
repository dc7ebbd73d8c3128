"""The study end to end on Keras (TensorFlow backend): CLI on a tiny phantom set, flag checks.

Every case runs the CLI in a subprocess: the study sets TensorFlow's thread
pools, which must happen before TensorFlow initialises, and the other Keras
tests initialise it in this process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("the Keras study test runs on the TensorFlow backend", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[3]
TINY_STUDY = shlex.split(
    "--phantom-images 100 --image-size 32 --epochs 2 --patience 1 --seeds 0 --batch-size 16"
)


def run_cli(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.study --framework keras ARGS`` from the repository root."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.study", "--framework", "keras", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_cli_runs_the_chosen_strategies_and_writes_the_full_report(tmp_path: Path) -> None:
    # every strategy is checked on the weights in test_keras_strategies.py; here the CLI runs
    # the three that touch the Keras adapter or the Table 3 depth, to keep the test short
    out = tmp_path / "study"
    result = run_cli(
        "--backbones",
        "mobilenet_v2",
        "--weights",
        "none",
        *TINY_STUDY,
        "--top-n",
        "mobilenet_v2=10",
        "--strategies",
        "traditional,two_stage,dynamic",
        "--out",
        str(out),
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Report: {out / 'report.md'}" in result.stdout

    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["strategy"] for row in rows] == ["traditional", "two_stage", "dynamic"]
    for row in rows:
        assert row["framework"] == "keras" and row["backbone"] == "mobilenet_v2"
        assert row["weights"] == "none (random init)"  # never reported as ImageNet
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and 0.0 <= float(row["macro_f1"]) <= 1.0
        assert 1 <= int(row["epochs"]) <= 2
        assert float(row["size_mb"]) > 1.0 and float(row["load_s"]) > 0.0

    document = json.loads((out / "results.json").read_text())
    assert document["meta"]["synthetic"] is True
    assert document["meta"]["environment"]["packages"]["keras"] is not None
    runs = {run["strategy"]: run for run in document["runs"]}
    depths = {name: (run["top_n"], run["num_groups"]) for name, run in runs.items()}
    assert depths == {
        "traditional": (10, None),
        "two_stage": (None, 1),
        "dynamic": (None, 52),  # MobileNetV2's convolutions, BN excluded
    }
    for run in runs.values():
        assert [e["epoch"] for e in run["timeline"]] == list(range(1, run["epochs"] + 1))
        model_path = out / run["model_path"]
        assert model_path.suffix == ".keras" and model_path.is_file()
        assert run["baselines"]["majority"]["answers"] == "always 'Pneumonia'"
    # patience 1 in a 2-epoch budget: at most one unfreeze, of the 3 deepest layers, lr x 0.9;
    # two_stage unfreezes its one group (the whole base) at lr / 10
    lr0 = document["meta"]["config"]["lr"]
    for event in runs["dynamic"]["unfreeze_events"]:
        assert event["groups"] == [49, 50, 51] and event["lr"] == pytest.approx(lr0 * 0.9)
    for event in runs["two_stage"]["unfreeze_events"]:
        assert event["groups"] == [0] and event["lr"] == pytest.approx(lr0 * 0.1)

    report = (out / "report.md").read_text()
    assert re.search(r"synthetic", report, re.IGNORECASE)
    for figure in re.findall(r"\((figures/[^)]+\.png)\)", report):
        assert (out / figure).stat().st_size > 1000


def test_evaluation_batches_are_the_same_every_epoch() -> None:
    from benchmarks.study.data.batches import SplitArrays, TrainingData
    from benchmarks.study.models.keras_backbones import get_backbone
    from benchmarks.study.runners.keras_batches import EvalBatches

    rng = np.random.default_rng(0)
    split = SplitArrays(rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), np.array([0, 1] * 3))
    data = TrainingData(split, split, split, num_classes=2, batch_size=4, seed=0)
    batches = EvalBatches(data, split, get_backbone("mobilenet_v2").preprocess)
    first_epoch = batches[0][0].copy()
    second_epoch = batches[0][0]
    np.testing.assert_array_equal(first_epoch, second_epoch)
    expected = split.images[:4, :, :, None].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(first_epoch, np.repeat(expected, 3, axis=-1), atol=1e-6)


def test_a_garbage_weights_file_is_refused_with_one_clear_message(tmp_path: Path) -> None:
    wrong = tmp_path / "not_weights.weights.h5"
    wrong.write_bytes(b"this is not an HDF5 file")
    result = run_cli(
        "--backbones",
        "mobilenet_v2",
        "--weights",
        str(wrong),
        *TINY_STUDY,
        "--out",
        str(tmp_path / "x"),
    )
    assert result.returncode == 1
    assert f"error: --weights {wrong} is not a Keras weights file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()  # nothing finished, nothing left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backbones", "efficientnet_lite0"],
            "unknown backbone(s) ['efficientnet_lite0'] for keras",
        ),
        (["--seeds", "-1"], "--seeds: '-1' is not an integer >= 0"),
        (["--weights", "/no/such/file.h5"], "'/no/such/file.h5': no such file"),
    ],
)
def test_bad_flags_exit_with_a_message_naming_the_value(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr

"""Bad input to the PyTorch study: one clear error each, and nothing half-written left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from study_helpers import TINY_BACKBONE, TinyFeatures, read_rows, run_tiny_study

from benchmarks.study import cli as study
from benchmarks.study.runners import torch_runner


def test_unavailable_imagenet_weights_give_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_tiny_study(TINY_BACKBONE, "imagenet", tmp_path / "x")
    assert status == 1
    message = capsys.readouterr().err
    assert "could not load ImageNet weights for tiny_test_cnn" in message
    assert "--weights PATH" in message and "--weights none" in message
    assert not (tmp_path / "x").exists()  # the first run failed: no output folder is left


def test_bad_data_leaves_no_output_folder_and_an_empty_one_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip" * 10)
    nested = tmp_path / "runs" / "study"
    assert run_tiny_study(TINY_BACKBONE, "none", nested, "--data", str(corrupt)) == 1
    assert "is not a .npz archive" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # the parents it created went too
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_tiny_study(TINY_BACKBONE, "imagenet", empty) == 1
    assert empty.is_dir() and not list(empty.iterdir())


def test_an_output_folder_holding_files_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "report.md").write_text("an earlier study")
    with pytest.raises(SystemExit) as exit_info:
        run_tiny_study(TINY_BACKBONE, "none", used)
    assert exit_info.value.code == 2
    assert f"--out {used} already holds files" in capsys.readouterr().err
    assert (used / "report.md").read_text() == "an earlier study"


def test_ctrl_c_writes_the_finished_runs_with_an_incomplete_banner(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    finished = []
    real_run = torch_runner.run

    def run_then_interrupt(*args, **kwargs):
        if finished:
            raise KeyboardInterrupt
        finished.append(real_run(*args, **kwargs))
        return finished[-1]

    monkeypatch.setattr(torch_runner, "run", run_then_interrupt)
    out = tmp_path / "interrupted"
    status = run_tiny_study(TINY_BACKBONE, "none", out, "--strategies", "linear_probe,dynamic")
    assert status == 130
    assert "INCOMPLETE study, interrupted (Ctrl-C) after 1 of 2 runs" in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert report.count("> **INCOMPLETE STUDY — interrupted (Ctrl-C) after 1 of 2 runs.**") == 2
    assert [row["strategy"] for row in read_rows(out)] == ["linear_probe"]
    assert json.loads((out / "results.json").read_text())["meta"]["incomplete"].startswith(
        "interrupted (Ctrl-C)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00garbage" * 50, "is not a torch weights file ("),
        (b"hello world" * 50, "is not a torch weights file ("),
        ("pickled", "holds Python objects besides tensors (a whole pickled model?)"),
        ("list", "holds a list, not a name -> tensor mapping"),
    ],
)
def test_a_weights_file_that_is_no_state_dict_gives_one_clear_error(
    content, message, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "weights.pt"
    if content == "pickled":
        torch.save({"model": TinyFeatures()}, path)
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    assert run_tiny_study("efficientnet_lite0", str(path), tmp_path / "x") == 1
    err = capsys.readouterr().err
    assert f"error: --weights {path} {message}" in err
    assert "torch.save(model.state_dict(), path)" in err
    assert "weights_only=False" not in err and "Traceback" not in err


def test_top_n_beyond_the_backbone_stops_the_study_and_keeps_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "partial"
    status = run_tiny_study(
        TINY_BACKBONE,
        "none",
        str(out),
        "--top-n",
        f"{TINY_BACKBONE}=5",
        "--strategies",
        "dynamic,traditional",
    )
    assert status == 1
    err = capsys.readouterr().err
    assert f"--top-n {TINY_BACKBONE}=5 exceeds the 2 weight layers" in err
    assert "INCOMPLETE study, stopped by StudyConfigError after 1 of 2 runs" in err
    assert [row["strategy"] for row in read_rows(out)] == ["dynamic"]
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["incomplete"].startswith("stopped by StudyConfigError after 1 of 2 runs: --top-n")
    assert "> **INCOMPLETE STUDY — stopped by StudyConfigError" in (out / "report.md").read_text()


def test_weights_file_of_another_architecture_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save(TinyFeatures().state_dict(), wrong)
    status = run_tiny_study("efficientnet_lite0", str(wrong), tmp_path / "x")
    assert status == 1
    assert "does not fit backbone efficientnet_lite0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbones", "resnet51"], "unknown backbone(s) ['resnet51'] for torch"),
        (["--seeds", "0,x"], "--seeds: 'x' is not an integer"),
        (["--seeds", "1,1"], "repeats a seed"),
        (["--weights", "/no/such/weights.pt"], "'/no/such/weights.pt': no such file"),
        (["--strategies", "dynamic,gradual"], "unknown ['gradual']"),
        (["--top-n", "vgg16=0"], "must look like backbone=N with N >= 1"),
        (["--top-n", "vgg17=3"], "--top-n: unknown backbone(s) ['vgg17']"),
        (["--decay", "1.0"], "0 <= decay < 1"),
        (["--image-size", "tiny"], "--image-size 'tiny'"),
        (["--phantom-images", "41"], "--phantom-images 41: must be >= 42"),
    ],
)
def test_bad_flags_exit_with_a_message_naming_the_value(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--framework", "torch", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err

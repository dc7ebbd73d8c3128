"""Kill a training process between epochs, between writes and during a write, then resume.

Each kill runs ``kill_run.py`` in a subprocess that dies with ``os._exit`` at one point (see
its docstring); the resume runs here. After a kill inside or right after dynft's write the
resumed run must end exactly like an uninterrupted one (decisions, weights, optimizer state);
where the two checkpoints on disk disagree it must stop with one ResumeMismatchError naming
both epochs, and the recovery it names must work.

Epoch 5's end unfreezes a group, so a kill around its writes leaves a dynft state and a
BackupAndRestore checkpoint with different trainable sets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from dynft_keras.backup import path_for
from keras_helpers import BACKEND, weights_of
from kill_run import KILLED, fit_scripted

from dynft_core import ResumeMismatchError

HERE = Path(__file__).resolve().parent
WEIGHTS, METADATA = "latest.weights.h5", "training_metadata.json"
# Every kill costs a process start with Keras imported: JAX runs one per kind of write point
# (the full set runs on TensorFlow and torch).
NOT_ON_JAX = pytest.mark.skipif(BACKEND == "jax", reason="this kill point runs on TF and torch")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model, cb, _ = fit_scripted(tmp_path_factory.mktemp("reference"))
    return cb.scheduler.history, weights_of(model), _optimizer_values(model)


def _optimizer_values(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]


def _kill(folder: Path, point: str, n: int) -> None:
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(HERE / "kill_run.py"), str(folder), point, str(n)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == KILLED, result.stderr[-3000:]


def _assert_same_as(reference, model, cb):
    history, weights, optimizer = reference
    assert [d.to_dict() for d in cb.scheduler.history] == [d.to_dict() for d in history]
    final = weights_of(model)
    for path, value in weights.items():
        np.testing.assert_allclose(final[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    resumed = _optimizer_values(model)
    assert len(resumed) == len(optimizer)
    for mine, theirs in zip(resumed, optimizer, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def killed_between_epochs(tmp_path_factory):
    """One kill before epoch 6 (0-based 5); each test that starts from it gets a copy."""
    folder = tmp_path_factory.mktemp("killed") / "backup"
    _kill(folder, "epoch", 5)
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "backup"
    shutil.copytree(folder, target)
    return target


@pytest.mark.parametrize(
    ("point", "n"),
    [
        ("epoch", 5),  # between epochs
        ("dynft-torn", 6),  # during dynft's write of epoch 5
        pytest.param("dynft-unrenamed", 6, marks=NOT_ON_JAX),  # between writing and renaming
        ("after-dynft", 6),  # between dynft's write and BackupAndRestore's
        # during BackupAndRestore's weights (its double_checkpoint falls back)
        pytest.param("bar-torn", 5, marks=NOT_ON_JAX),
    ],
)
def test_resume_after_the_kill_repeats_the_uninterrupted_run(
    tmp_path, reference, killed_between_epochs, point, n
):
    if point == "epoch":
        folder = _copy(killed_between_epochs, tmp_path)
    else:
        folder = tmp_path / "backup"
        _kill(folder, point, n)
    # The kill fell where it should: before or after dynft's backup of epoch 5 was in place.
    assert path_for(folder, 5).is_file() == (point in ("epoch", "after-dynft", "bar-torn"))
    assert path_for(folder, 4).is_file()
    model, cb, _ = fit_scripted(folder, seed=7)
    _assert_same_as(reference, model, cb)
    assert not folder.exists()  # a finished run cleans up


def test_kill_between_backup_and_restores_two_writes_is_refused_and_recoverable(
    tmp_path, reference
):
    folder = tmp_path / "backup"
    _kill(folder, "bar-weights", 5)  # epoch 5's weights are on disk, the metadata says 4
    with pytest.raises(
        ResumeMismatchError,
        match=r"at epoch 5 but BackupAndRestore's training_metadata.json resumes after epoch 4",
    ):
        fit_scripted(folder, seed=7)
    # The way out the message names: point the metadata at the weights it holds.
    metadata = folder / METADATA
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "epoch": 5}))
    model, cb, _ = fit_scripted(folder, seed=7)
    _assert_same_as(reference, model, cb)


@NOT_ON_JAX
def test_double_checkpoint_fallback_to_an_older_epoch_is_refused_then_resumes(
    tmp_path, reference, killed_between_epochs
):
    folder = _copy(killed_between_epochs, tmp_path)
    (folder / WEIGHTS).write_bytes(b"damaged")  # BackupAndRestore falls back to epoch 4
    # Keras loads epoch 4's optimizer into epoch 5's structure (it warns), then dynft refuses.
    with (
        pytest.warns(UserWarning, match="Skipping variable loading"),
        pytest.raises(
            ResumeMismatchError, match="at epoch 5 but BackupAndRestore resumes after epoch 4"
        ),
    ):
        fit_scripted(folder, seed=7)
    # The fallback rewrote BackupAndRestore's files to epoch 4; dynft kept that epoch too.
    assert path_for(folder, 4).is_file()
    model, cb, _ = fit_scripted(folder, seed=7)
    _assert_same_as(reference, model, cb)


@NOT_ON_JAX
def test_backup_and_restore_files_gone_is_refused(tmp_path, killed_between_epochs):
    folder = _copy(killed_between_epochs, tmp_path)
    for name in (WEIGHTS, METADATA, WEIGHTS + ".bkp", METADATA + ".bkp"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(
        ResumeMismatchError, match="at epoch 5 but BackupAndRestore resumes after epoch 0"
    ):
        fit_scripted(folder, seed=7)

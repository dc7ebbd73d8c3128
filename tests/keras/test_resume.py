"""get_state/set_state and resuming an interrupted fit with BackupAndRestore."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from dynft_keras.backup import SNAPSHOT_FILE, STATE_FILE
from keras_helpers import ScriptedMonitor, WeightRecorder, tiny_data, tiny_model, weights_of

# 3 groups, patience 1, step 1: unfreezes after epochs 3, 5 and 7, stop after 8.
SCRIPT = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75, 0.76]
KWARGS = {"patience": 1, "step": 1, "decay": 0.5, "verbose": 0}


class Interrupt(keras.callbacks.Callback):
    """Raises at the beginning of epoch ``at`` (0-based), like a preempted job."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.at:
            raise RuntimeError("interrupted")


def _fit(backup_dir, extra=(), seed=0):
    model, backbone = tiny_model(seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, backup_dir=backup_dir, **KWARGS)
    callbacks = [ScriptedMonitor(SCRIPT), cb, keras.callbacks.BackupAndRestore(backup_dir), *extra]
    history = model.fit(
        x, y, batch_size=8, epochs=20, shuffle=False, verbose=0, callbacks=callbacks
    )
    return model, cb, history


def _resumed_from_state_after_three_epochs():
    """Train 3 scripted epochs, then load the callback's state into a fresh model's callback."""
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    cb = DynamicFineTuning(backbone, max_epochs=20, **KWARGS)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), cb])

    fresh_model, fresh_backbone = tiny_model(seed=5)
    fresh_model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    resumed = DynamicFineTuning(fresh_backbone, max_epochs=20, **KWARGS)
    resumed.set_state(cb.get_state())
    return x, y, fresh_model, fresh_backbone, resumed


def test_resume_after_an_interruption_repeats_the_uninterrupted_run(tmp_path):
    reference_model, reference_cb, reference_history = _fit(tmp_path / "reference")
    assert not (tmp_path / "reference").exists()  # a finished run leaves no backup

    backup_dir = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(backup_dir, extra=[Interrupt(at=4)])
    assert (backup_dir / STATE_FILE).is_file() and (backup_dir / SNAPSHOT_FILE).is_file()
    saved = json.loads((backup_dir / STATE_FILE).read_text())
    assert saved["scheduler"]["epoch"] == 4 and saved["snapshot_epoch"] == 4

    # A new process would build a fresh model: use other initial weights to be sure.
    model, cb, history = _fit(backup_dir, seed=7)
    decisions = [d.to_dict() for d in cb.scheduler.history]
    assert decisions == [d.to_dict() for d in reference_cb.scheduler.history]
    for key in ("lr", "dynft_unfrozen"):
        np.testing.assert_allclose(history.history[key], reference_history.history[key][4:])
    final, reference = weights_of(model), weights_of(reference_model)
    for path, value in reference.items():
        np.testing.assert_allclose(final[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def test_get_state_set_state_round_trip():
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    cb = DynamicFineTuning(backbone, max_epochs=20, **KWARGS)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), cb])
    state = json.loads(json.dumps(cb.get_state()))
    assert state["learning_rate"] == pytest.approx(0.05)

    other_model, other_backbone = tiny_model(seed=3)
    twin = DynamicFineTuning(other_backbone, max_epochs=20, **KWARGS)
    twin.set_state(state)
    assert twin.scheduler.state_dict() == cb.scheduler.state_dict()
    for value in SCRIPT[3:6]:
        assert twin.scheduler.step(value) == cb.scheduler.step(value)

    mismatched = DynamicFineTuning(other_backbone, max_epochs=20, **{**KWARGS, "patience": 2})
    with pytest.raises(ValueError, match="patience=1 but this scheduler has patience=2"):
        mismatched.set_state(state)


def test_set_state_restores_trainable_set_and_learning_rate_at_fit():
    x, y, fresh_model, fresh_backbone, resumed = _resumed_from_state_after_three_epochs()
    history = fresh_model.fit(
        x, y, epochs=4, initial_epoch=3, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), resumed]
    )
    assert [fresh_backbone.get_layer(f"conv{i}").trainable for i in range(3)] == [
        False,
        False,
        True,
    ]
    assert history.history["lr"] == pytest.approx([0.05])
    assert resumed.scheduler.epoch == 4


def test_restore_without_the_snapshot_warns_and_keeps_the_weights():
    x, y, fresh_model, fresh_backbone, resumed = _resumed_from_state_after_three_epochs()
    recorder = WeightRecorder()
    with pytest.warns(UserWarning, match="best weights of epoch 2 are not in memory"):
        fresh_model.fit(
            x,
            y,
            epochs=4,
            initial_epoch=3,
            verbose=0,
            callbacks=[ScriptedMonitor([*SCRIPT[:3], 0.99]), recorder, resumed],
        )
    assert resumed.scheduler.history[-1].newly_unfrozen == (1,)
    final = weights_of(fresh_model)
    for path, value in recorder.epochs[0].items():
        np.testing.assert_array_equal(final[path], value)


def test_a_stopped_callback_refuses_a_second_fit():
    model, backbone = tiny_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    cb = DynamicFineTuning(backbone, **KWARGS)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), cb])
    with pytest.raises(RuntimeError, match="already stopped at epoch 1"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), cb])


def test_resume_refuses_backup_and_restore_listed_first(tmp_path):
    def fit(extra, seed):
        model, backbone = tiny_model(seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
        x, y = tiny_data()
        cb = DynamicFineTuning(backbone, backup_dir=tmp_path, **KWARGS)
        callbacks = [ScriptedMonitor(SCRIPT), keras.callbacks.BackupAndRestore(tmp_path), cb]
        model.fit(x, y, batch_size=8, epochs=20, verbose=0, callbacks=[*callbacks, *extra])

    with pytest.raises(RuntimeError, match="interrupted"):
        fit([Interrupt(at=4)], seed=0)
    with pytest.raises(RuntimeError, match="list DynamicFineTuning before BackupAndRestore"):
        fit([], seed=1)

"""get_state/set_state, and resuming an interrupted fit with BackupAndRestore in this process.

The kills (a process that dies between or during writes) are in test_kill_resume.py.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from dynft_keras.backup import path_for
from keras_helpers import ScriptedMonitor, WeightRecorder, tiny_data, tiny_model, weights_of

from dynft_core import ResumeMismatchError

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


def _fit(backup_dir, extra=(), seed=0, dynft_backup=True):
    model, backbone = tiny_model(seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, backup_dir=backup_dir if dynft_backup else None, **KWARGS)
    callbacks = [ScriptedMonitor(SCRIPT), cb, keras.callbacks.BackupAndRestore(backup_dir), *extra]
    history = model.fit(
        x, y, batch_size=8, epochs=20, shuffle=False, verbose=0, callbacks=callbacks
    )
    return model, cb, history


def test_resume_after_an_interruption_repeats_the_uninterrupted_run(tmp_path):
    reference_model, reference_cb, reference_history = _fit(tmp_path / "reference")
    assert not (tmp_path / "reference").exists()  # a finished run leaves no backup

    backup_dir = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(backup_dir, extra=[Interrupt(at=4)])
    # The two newest dynft backups are kept, next to BackupAndRestore's checkpoint.
    assert path_for(backup_dir, 3).is_file() and path_for(backup_dir, 4).is_file()
    assert not path_for(backup_dir, 2).exists()

    # A new process would build a fresh model: use other initial weights to be sure.
    model, cb, history = _fit(backup_dir, seed=7)
    decisions = [d.to_dict() for d in cb.scheduler.history]
    assert decisions == [d.to_dict() for d in reference_cb.scheduler.history]
    for key in ("lr", "dynft_unfrozen"):
        np.testing.assert_allclose(history.history[key], reference_history.history[key][4:])
    final, reference = weights_of(model), weights_of(reference_model)
    for path, value in reference.items():
        np.testing.assert_allclose(final[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    optimizer, reference_optimizer = model.optimizer, reference_model.optimizer
    assert len(optimizer.variables) == len(reference_optimizer.variables)
    for mine, theirs in zip(optimizer.variables, reference_optimizer.variables, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs),
            rtol=1e-5, atol=1e-6, err_msg=mine.path,
        )  # fmt: skip


def test_backup_and_restore_without_dynft_backup_is_refused_at_train_begin(tmp_path):
    with pytest.raises(RuntimeError, match="backup_dir is None: a resume would restart"):
        _fit(tmp_path, dynft_backup=False)


def test_dynft_backup_gone_is_refused_at_resume(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(tmp_path, extra=[Interrupt(at=3)])
    for path in tmp_path.glob("dynft_backup_*"):
        path.unlink()
    expected = "at epoch 0 but BackupAndRestore resumes after epoch 3.*found no backup of its own"
    with pytest.raises(ResumeMismatchError, match=expected):
        _fit(tmp_path, seed=1)


def test_get_state_set_state_round_trip():
    state = _stepped_state()
    assert state["learning_rate"] == pytest.approx(0.1)
    assert state["train_steps"] == 3
    assert state["scheduler"]["epoch"] == 3 and not state["scheduler"]["stopped"]

    other_model, other_backbone = tiny_model(seed=3)
    twin = DynamicFineTuning(other_backbone, max_epochs=20, **KWARGS)
    twin.set_state(state)
    assert twin.scheduler.state_dict() == state["scheduler"]
    # The snapshot's arrays come back only through a backup file.
    assert twin.get_state() == {**state, "snapshot_epoch": None}

    mismatched = DynamicFineTuning(other_backbone, max_epochs=20, **{**KWARGS, "patience": 2})
    with pytest.raises(ValueError, match="saved with patience=1 but this callback has patience=2"):
        mismatched.set_state(state)


def _stepped_state(script=SCRIPT):
    """The state of a run interrupted after 3 epochs (fit raised: the run is not finished)."""
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    cb = DynamicFineTuning(backbone, max_epochs=20, **KWARGS)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, epochs=20, verbose=0, callbacks=[ScriptedMonitor(script), cb, Interrupt(3)])
    return json.loads(json.dumps(cb.get_state()))


def _corrupt(state, path, value):
    state = json.loads(json.dumps(state))
    *parents, key = path
    target = state
    for parent in parents:
        target = target[parent]
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return state


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("version",), 1, "unsupported DynamicFineTuning state version 1"),
        (("train_steps",), KeyError, "'train_steps' is missing"),
        (("extra",), 1, "'extra' is unknown"),
        (("options", "patience"), "5", "'options' patience must be an integer"),
        (("options", "colour"), "red", "'options' unknown fine-tuning option"),
        (("num_groups",), 4, "'num_groups' is 4 but this callback has 3 groups"),
        (("scheduler", "stopped"), "false", "'scheduler' invalid scheduler state: 'stopped'"),
        (("scheduler", "config", "max_epochs"), "20", "'scheduler"),
        (("scheduler",), None, "'scheduler' a scheduler state must be a dict"),
        (("learning_rate",), -1.0, "'learning_rate' learning_rate must be a finite number > 0"),
        (("learning_rate",), {"class_name": "Nope", "config": {}}, "'learning_rate'"),
        (("train_steps",), -2, "'train_steps' must be an integer >= 0"),
        (("snapshot_epoch",), 3, "'snapshot_epoch' is 3 but the best epoch is 2"),
        (("pending_restore",), "later", "'pending_restore' must be one of"),
        (("pending_restore",), "diverged", "'pending_restore' is 'diverged' but the last"),
    ],
)
def test_set_state_checks_every_field_and_changes_nothing(path, value, message):
    state = _stepped_state()
    _, backbone = tiny_model(seed=4)
    cb = DynamicFineTuning(backbone, max_epochs=20, **KWARGS)
    before = (cb.scheduler.state_dict(), cb.get_state())
    with pytest.raises(ValueError, match=message):
        cb.set_state(_corrupt(state, path, value))
    assert (cb.scheduler.state_dict(), cb.get_state()) == before
    cb.set_state(state)  # the untouched state still loads
    assert cb.scheduler.epoch == 3


def _resumed_from_state_after_three_epochs():
    """Train 3 scripted epochs, then load the callback's state into a fresh model's callback."""
    state = _stepped_state()
    x, y = tiny_data(count=8)

    fresh_model, fresh_backbone = tiny_model(seed=5)
    fresh_model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    resumed = DynamicFineTuning(fresh_backbone, max_epochs=20, **KWARGS)
    resumed.set_state(state)
    return x, y, fresh_model, fresh_backbone, resumed


def test_set_state_restores_trainable_set_rate_and_steps_at_fit():
    x, y, fresh_model, fresh_backbone, resumed = _resumed_from_state_after_three_epochs()
    with pytest.warns(UserWarning, match="max_epochs=20 but the framework stops after 4"):
        history = fresh_model.fit(
            x, y, epochs=4, initial_epoch=3, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), resumed]
        )
    assert [fresh_backbone.get_layer(f"conv{i}").trainable for i in range(3)] == [
        False,
        False,
        True,
    ]
    assert history.history["lr"] == pytest.approx([0.05])  # 0.1 x (1 - decay) after one unfreeze
    assert resumed.scheduler.epoch == 4
    assert int(fresh_model.optimizer.iterations) == 4


def test_set_state_needs_fit_to_start_at_the_saved_epoch():
    x, y, fresh_model, _, resumed = _resumed_from_state_after_three_epochs()
    with pytest.raises(ResumeMismatchError, match="pass initial_epoch=3 to fit"):
        fresh_model.fit(x, y, epochs=20, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), resumed])


def test_restore_without_the_snapshot_warns_and_keeps_the_weights():
    x, y, fresh_model, fresh_backbone, resumed = _resumed_from_state_after_three_epochs()
    recorder = WeightRecorder()
    with pytest.warns(UserWarning) as caught:
        fresh_model.fit(
            x,
            y,
            epochs=4,
            initial_epoch=3,
            verbose=0,
            callbacks=[ScriptedMonitor([*SCRIPT[:3], 0.99]), recorder, resumed],
        )
    assert any("best weights of epoch 2 are not in memory" in str(w.message) for w in caught)
    unfreeze, end = resumed.scheduler.history[-2:]
    assert unfreeze.newly_unfrozen == (1,) and end.external_stop
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


def test_backup_and_restore_listed_first_is_refused_at_train_begin(tmp_path):
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, backup_dir=tmp_path, **KWARGS)
    callbacks = [ScriptedMonitor(SCRIPT), keras.callbacks.BackupAndRestore(tmp_path), cb]
    with pytest.raises(RuntimeError, match="BackupAndRestore is listed before DynamicFineTuning"):
        model.fit(x, y, batch_size=8, epochs=20, verbose=0, callbacks=callbacks)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing was saved


def test_a_callback_whose_fit_raised_goes_on_from_its_epoch():
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, **KWARGS)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, epochs=20, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), cb, Interrupt(4)])
    with pytest.raises(ResumeMismatchError, match="pass initial_epoch=4 to fit to go on"):
        model.fit(x, y, epochs=20, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), cb])
    optimizer = model.optimizer
    model.fit(x, y, epochs=20, initial_epoch=4, verbose=0, callbacks=[ScriptedMonitor(SCRIPT), cb])
    assert model.optimizer is optimizer  # its state went on, as in one fit
    assert [d.epoch for d in cb.scheduler.history] == list(range(1, 9))
    assert cb.scheduler.stopped and cb.scheduler.num_unfrozen == 3

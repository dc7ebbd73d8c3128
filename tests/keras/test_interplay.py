"""DynamicFineTuning next to the Keras callbacks users combine it with, one real run each.

Scripted values, patience 1, step 1, decay 0.5, 3 groups: the best epoch is 3 (0.7); epochs
2, 4 and 5 are misses and unfreeze conv2, conv1, conv0 (rates x0.5 each, back to the best);
epoch 6 misses with everything unfrozen and stops.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from keras_helpers import ScriptedMonitor, WeightRecorder, tiny_data, tiny_model, weights_of

SCRIPT = [1.0, 1.1, 0.7, 0.9, 0.95, 0.96]
BEST = 3
FACTOR = [1, 0.5, 0.5, 0.25, 0.125, 0.125]  # the decay after each epoch's decision
LR = 0.05
FIT = {"batch_size": 8, "shuffle": False, "verbose": 0}


def _fit(extra_before=(), extra_after=(), epochs=6, optimizer=None, script=SCRIPT, **options):
    model, backbone = tiny_model()
    model.compile(optimizer=optimizer or keras.optimizers.Adam(LR), loss="categorical_crossentropy")
    x, y = tiny_data()
    recorder = WeightRecorder()
    options = {"patience": 1, "step": 1, "decay": 0.5, "verbose": 0, **options}
    cb = DynamicFineTuning(backbone, **options)
    callbacks = [ScriptedMonitor(script), recorder, *extra_before, cb, *extra_after]
    history = model.fit(x, y, epochs=epochs, callbacks=callbacks, **FIT)
    return model, cb, recorder, history


def _assert_weights_of_epoch(model, recorder, epoch):
    final = weights_of(model)
    for path, value in recorder.epochs[epoch - 1].items():
        np.testing.assert_array_equal(final[path], value, err_msg=f"{path} (epoch {epoch})")


def test_early_stopping_ends_the_run_on_dynfts_best_weights():
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2)
    model, cb, recorder, history = _fit(extra_after=[stopper])
    assert len(history.history["loss"]) == 5  # stopped after epochs 4 and 5 missed 0.7
    assert cb.scheduler.history[-1].external_stop
    _assert_weights_of_epoch(model, recorder, BEST)


@pytest.mark.parametrize("early_stopping_first", [True, False])
def test_with_early_stopping_restoring_too_the_callback_listed_last_wins(early_stopping_first):
    # EarlyStopping watches another value (best at the last epoch) and restores in its
    # on_train_end, like DynamicFineTuning: the later one in the list wins.
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss_for_stopper", mode="min", patience=10, restore_best_weights=True
    )
    marks = ScriptedMonitor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], key="val_loss_for_stopper")
    if early_stopping_first:
        model, _, recorder, _ = _fit(extra_before=[marks, stopper])
        _assert_weights_of_epoch(model, recorder, BEST)
    else:
        with pytest.warns(UserWarning, match="restores its own best weights over"):
            model, _, recorder, _ = _fit(extra_before=[marks], extra_after=[stopper])
        _assert_weights_of_epoch(model, recorder, 6)


def test_terminate_on_nan_ends_on_the_best_finite_weights_and_optimizer_state():
    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.params and len(recorder.epochs) == 3:  # during epoch 4
                kernel = self.model.get_layer("head").kernel
                kernel.assign(keras.ops.full(kernel.shape, math.nan))

    recorder = WeightRecorder()
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(LR), loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, patience=5, verbose=0)
    model.fit(
        x, y, epochs=8, validation_data=tiny_data(8, seed=1),
        callbacks=[recorder, Poison(), keras.callbacks.TerminateOnNaN(), cb], **FIT,
    )  # fmt: skip
    assert len(recorder.epochs) == 4 and cb.scheduler.history[3].diverged
    assert not np.isfinite(recorder.epochs[3][model.get_layer("head").kernel.path]).any()
    best = cb.scheduler.best_epoch
    _assert_weights_of_epoch(model, recorder, best)
    for variable in model.optimizer.variables:
        assert np.isfinite(keras.ops.convert_to_numpy(variable)).all(), variable.path


def test_a_fit_shorter_than_max_epochs_warns_and_ends_on_the_best():
    with pytest.warns(UserWarning, match="max_epochs=20 but the framework stops after 4"):
        model, cb, recorder, _ = _fit(epochs=4, max_epochs=20)
    assert cb.scheduler.max_epochs == 20 and cb.scheduler.history[-1].external_stop
    _assert_weights_of_epoch(model, recorder, BEST)


@pytest.mark.parametrize(("restore", "final_epoch"), [(True, 2), (False, 3)])
def test_restore_best_weights_false_keeps_the_last_weights(restore, final_epoch):
    # Epoch 3 misses without reaching patience 2: no rollback, the fit budget ends the run.
    model, _, recorder, _ = _fit(
        epochs=3, script=[1.0, 0.8, 0.9], patience=2, restore_best_weights=restore
    )
    _assert_weights_of_epoch(model, recorder, final_epoch)


def test_keyboard_interrupt_then_finish_restores_the_best():
    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 4 and batch == 1:  # inside epoch 5, two batches trained
                raise KeyboardInterrupt

    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(LR), loss="categorical_crossentropy")
    x, y = tiny_data()
    recorder = WeightRecorder()
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.5, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=6, callbacks=[ScriptedMonitor(SCRIPT), recorder, cb, Stop()], **FIT)
    kernel = model.get_layer("head").kernel
    assert not np.array_equal(keras.ops.convert_to_numpy(kernel), recorder.epochs[2][kernel.path])
    decision = cb.finish("interrupted")
    assert decision.restore_best and cb.scheduler.stopped
    _assert_weights_of_epoch(model, recorder, BEST)
    assert not cb.finish().restore_best  # a second call does nothing


def test_reduce_lr_on_plateau_composes_with_the_decay():
    reducer = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=1)
    model, _, _, history = _fit(extra_after=[reducer], epochs=5)
    # Listed after dynft, the reducer reads the rate dynft left (base x FACTOR), logs it, and
    # cuts it x0.2 after the misses of epochs 2, 4 and 5; the unfreezes decay on top.
    base = [1, 1, 0.2, 0.2, 0.04]
    seen = [LR * b * f for b, f in zip(base, FACTOR, strict=False)]
    np.testing.assert_allclose(history.history["learning_rate"], seen, rtol=1e-6)
    np.testing.assert_allclose(history.history["lr"], seen, rtol=1e-6)
    rates = model.optimizer.learning_rates()
    np.testing.assert_allclose(list(rates.values()), [LR * 0.008 * 0.125] * 4, rtol=1e-6)


@pytest.mark.parametrize("reads_the_rate", [False, True])
def test_the_decay_survives_a_learning_rate_scheduler_setting_the_rate_each_epoch(reads_the_rate):
    def by_epoch(epoch):
        return LR * 0.9**epoch

    def from_rate(epoch, rate):
        return rate * 0.9 if epoch else rate

    schedule = from_rate if reads_the_rate else by_epoch
    scheduler = keras.callbacks.LearningRateScheduler(schedule)
    model, _, _, history = _fit(extra_before=[scheduler], epochs=5)
    # The schedule runs undisturbed; the decay multiplies what it sets (the scheduler logs
    # the rate before that epoch's decision, dynft after).
    base = [LR * 0.9**epoch for epoch in range(5)]
    before = [1, *FACTOR[:4]]
    logged = [b * f for b, f in zip(base, before, strict=True)]
    np.testing.assert_allclose(history.history["learning_rate"], logged, rtol=1e-5)
    np.testing.assert_allclose(
        history.history["lr"], [b * f for b, f in zip(base, FACTOR, strict=False)], rtol=1e-5
    )
    rates = model.optimizer.learning_rates()
    np.testing.assert_allclose(list(rates.values()), [base[4] * FACTOR[4]] * 4, rtol=1e-5)
    assert scheduler.schedule is schedule  # given back at the end of fit


def test_model_checkpoint_after_dynft_saves_what_each_epoch_trained(tmp_path):
    pattern = str(tmp_path / "epoch{epoch}.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True)
    full = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    model, _, recorder, _ = _fit(extra_after=[checkpoint, full], epochs=4)
    for epoch in (2, 4):  # both end with a rollback
        saved, _ = tiny_model(seed=9)
        saved.load_weights(tmp_path / f"epoch{epoch}.weights.h5")
        for path, value in weights_of(saved).items():
            np.testing.assert_array_equal(value, recorder.epochs[epoch - 1][path], err_msg=path)
    reloaded = keras.saving.load_model(tmp_path / "epoch4.keras", compile=False)
    for path, value in weights_of(reloaded).items():
        np.testing.assert_array_equal(value, recorder.epochs[3][path], err_msg=path)

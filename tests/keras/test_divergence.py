"""A non-finite epoch: rolled back before the next epoch with a fresh optimizer state; loud
when there is no best to roll back to."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from keras_helpers import WeightRecorder, tiny_data, tiny_model, weights_of


class Poison(keras.callbacks.Callback):
    """Sets the head's kernel to NaN after the first batch of epoch ``at`` (0-based)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at and batch == 0:
            kernel = self.model.get_layer("head").kernel
            kernel.assign(keras.ops.full(kernel.shape, math.nan))


class OptimizerAtEpochBegin(keras.callbacks.Callback):
    """Numpy copies of every optimizer variable at each epoch begin (list it after dynft)."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, np.ndarray]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(
            {
                v.path: np.array(keras.ops.convert_to_numpy(v))
                for v in self.model.optimizer.variables
            }
        )


def _fit(poison_at, epochs=5):
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    x, y = tiny_data()
    recorder, optimizer_state = WeightRecorder(), OptimizerAtEpochBegin()
    cb = DynamicFineTuning(backbone, patience=5, verbose=0)
    model.fit(
        x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0,
        validation_data=tiny_data(count=8, seed=1),
        callbacks=[Poison(poison_at), recorder, cb, optimizer_state],
    )  # fmt: skip
    return model, cb, recorder, optimizer_state


def test_a_nan_epoch_is_rolled_back_with_a_fresh_optimizer_state():
    model, cb, recorder, optimizer_state = _fit(poison_at=2)
    decision = cb.scheduler.history[2]
    assert decision.diverged and decision.restore_best and not decision.newly_unfrozen
    head_kernel = model.get_layer("head").kernel.path
    assert np.isnan(recorder.epochs[2][head_kernel]).all()
    # Epoch 4 starts from the best weights (epoch 1 or 2) with every optimizer slot fresh.
    state = optimizer_state.epochs[3]
    assert all(np.isfinite(value).all() for value in state.values())
    head = model.optimizer.head
    assert all(not state[v.path].any() for v in head.variables)  # moments and own steps
    assert state[model.optimizer._iterations.path] == 12  # the schedule's clock runs on
    assert np.isfinite(recorder.epochs[3][head_kernel]).all()
    final = weights_of(model)
    assert all(np.isfinite(value).all() for value in final.values())
    for path, value in recorder.epochs[cb.scheduler.best_epoch - 1].items():
        np.testing.assert_array_equal(final[path], value, err_msg=path)


def test_a_nan_first_epoch_warns_that_nothing_can_be_rolled_back():
    with pytest.warns(RuntimeWarning) as caught:
        model, _, _, _ = _fit(poison_at=0, epochs=2)
    messages = [str(w.message) for w in caught]
    assert any("no earlier best state to roll back to" in m for m in messages)
    assert any("weights are not all finite at the end of training" in m for m in messages)
    assert np.isnan(keras.ops.convert_to_numpy(model.get_layer("head").kernel)).all()

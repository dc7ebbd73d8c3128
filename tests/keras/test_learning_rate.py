"""Learning-rate schedules, the logs written for other callbacks, the monitor and its mode,
and the optimizers that cannot be split per group."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from keras_helpers import ScriptedMonitor, tiny_data, tiny_model


def _schedule(step: int) -> float:
    return 0.1 * 0.5 ** (step / 4)


def test_schedule_is_scaled_and_continues_across_unfreezes():
    model, backbone = tiny_model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="categorical_crossentropy")
    x, y = tiny_data()  # 32 samples, batch 8: 4 steps per epoch
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.5, verbose=0)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=5,
        verbose=0,
        callbacks=[ScriptedMonitor([1.0, 1.1, 0.9, 1.0, 0.8]), cb],
    )
    # Unfreezes after epochs 2 and 4; at the end of epoch e, 4e steps were taken.
    expected = [
        _schedule(4),
        0.5 * _schedule(8),
        0.5 * _schedule(12),
        0.25 * _schedule(16),
        0.25 * _schedule(20),
    ]
    np.testing.assert_allclose(history.history["lr"], expected, rtol=1e-5)
    # One clock for every group: the schedule is the user's, evaluated at the model's steps.
    optimizer = model.optimizer
    assert optimizer._learning_rate is schedule
    assert int(optimizer.iterations) == 20 and optimizer.rate_factor == pytest.approx(0.25)
    np.testing.assert_allclose(
        list(optimizer.learning_rates().values()), [0.25 * _schedule(20)] * 3, rtol=1e-5
    )


def test_logs_reach_csv_logger(tmp_path):
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, patience=1, step=2, decay=0.5, verbose=0)
    log_file = tmp_path / "log.csv"
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=3,
        verbose=0,
        callbacks=[ScriptedMonitor([1.0, 2.0, 0.5]), cb, keras.callbacks.CSVLogger(str(log_file))],
    )
    rows = log_file.read_text().strip().splitlines()
    header = rows[0].split(",")
    unfrozen = [int(float(row.split(",")[header.index("dynft_unfrozen")])) for row in rows[1:]]
    lrs = [float(row.split(",")[header.index("lr")]) for row in rows[1:]]
    assert unfrozen == [0, 2, 2]
    np.testing.assert_allclose(lrs, [0.2, 0.1, 0.1], rtol=1e-6)


def test_verbose_prints_the_reason_of_each_unfreeze_and_the_stop(capsys):
    model, backbone = tiny_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.5, verbose=1)
    model.fit(
        x, y, batch_size=8, epochs=3, verbose=0, callbacks=[ScriptedMonitor([1.0, 2.0, 3.0]), cb]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if "DynamicFineTuning" in line]
    # Epoch 3 both unfreezes and reaches the budget: one line carries both.
    assert len(lines) == 2
    assert "unfroze group 2" in lines[0] and "stop" not in lines[0]
    assert "unfroze group 1" in lines[1] and "epoch budget of 3 reached" in lines[1]


def test_missing_monitor_lists_the_keys_present_and_gives_the_model_back_as_it_was():
    model, backbone = tiny_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    optimizer = model.optimizer
    flags = [layer.trainable for layer in model._flatten_layers()]
    x, y = tiny_data(count=8)
    cb = DynamicFineTuning(backbone, monitor="val_auc", verbose=0)
    with pytest.raises(
        KeyError, match=r"monitors 'val_auc', but the epoch logs only have \['loss'\]"
    ):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    assert model.optimizer is optimizer
    assert [layer.trainable for layer in model._flatten_layers()] == flags
    before = [np.array(w) for w in backbone.trainable_weights]
    model.fit(x, y, epochs=1, verbose=0)  # a plain fit afterwards trains the backbone again
    after = [np.array(w) for w in backbone.trainable_weights]
    assert before and any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("mode", ["auto", "max"])
def test_accuracy_is_maximised_with_mode_auto_or_max(mode):
    model, backbone = tiny_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, monitor="val_accuracy", mode=mode, patience=2, verbose=0)
    history = model.fit(
        x,
        y,
        validation_data=tiny_data(count=8, seed=3),
        batch_size=16,
        epochs=3,
        verbose=0,
        callbacks=[cb],
    )
    values = history.history["val_accuracy"]
    assert [d.value for d in cb.scheduler.history if not d.external_stop] == pytest.approx(values)
    assert cb.scheduler.mode == "max"
    assert cb.scheduler.best == pytest.approx(max(values))


class _HiddenSetting(keras.optimizers.SGD):
    """An SGD with a setting its get_config() does not return."""

    def __init__(self, *args, scale=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        (
            lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
            "does not support LossScaleOptimizer",
        ),
        (lambda: keras.optimizers.SGD(lambda: 0.1), "learning_rate is a number or a"),
        (
            lambda: keras.optimizers.MultiOptimizer(
                keras.optimizers.OptimizerMap(keras.optimizers.SGD(0.1))
            ),
            "holds several optimizers",
        ),
        (
            lambda: keras.optimizers.Adam(0.1, global_clipnorm=1.0, gradient_accumulation_steps=2),
            "cannot combine global_clipnorm with gradient_accumulation_steps",
        ),
        (lambda: _HiddenSetting(0.1, scale=2.0), r"settings that get_config\(\) does not return"),
    ],
)
def test_optimizers_that_cannot_be_split_per_group_are_refused_at_train_begin(optimizer, message):
    model, backbone = tiny_model()
    model.compile(optimizer=optimizer(), loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    with pytest.raises(TypeError, match=message):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[DynamicFineTuning(backbone, verbose=0)])


def test_replacing_the_optimizer_during_fit_is_refused():
    class Replace(keras.callbacks.Callback):  # listed before dynft, after epoch 1
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer = keras.optimizers.SGD(0.1)

    model, backbone = tiny_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    cb = DynamicFineTuning(backbone, verbose=0)
    callbacks = [ScriptedMonitor([1.0, 0.9, 0.8]), Replace(), cb]
    with pytest.raises(RuntimeError, match="model.optimizer was replaced during fit"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=callbacks)


def test_a_head_without_trainable_weights_is_refused():
    model, backbone = tiny_model()
    model.get_layer("head").trainable = False
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = tiny_data(count=8)
    flags = [(layer.name, layer.trainable) for layer in model._flatten_layers()]
    compiled = model.optimizer
    with pytest.raises(ValueError, match="has no trainable weights: nothing would train"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[DynamicFineTuning(backbone, verbose=0)])
    assert [(layer.name, layer.trainable) for layer in model._flatten_layers()] == flags
    assert model.optimizer is compiled

"""Algorithm 1 inside one ``model.fit``: scripted monitor values, checked with numbers.

The scripted trace (3 groups, patience 1, step 1, decay 0.5):

======  =====  ===============================================
epoch   value  decision
======  =====  ===============================================
1       1.00   first best
2       0.90   improved
3       0.95   plateau: unfreeze group 2, lr x0.5, restore epoch 2
4       0.80   improved
5       0.85   plateau: unfreeze group 1, lr x0.5, restore epoch 4
6       0.90   plateau: unfreeze group 0, lr x0.5, restore epoch 4
7       0.70   improved
8       0.75   plateau with all groups unfrozen: stop, restore epoch 7
======  =====  ===============================================
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from dynft_keras import (
    DynamicFineTuning,
    FineTuningOptimizer,
    WeightSnapshot,
    changeable_variables,
    resolve_groups,
)
from dynft_keras.freezing import apply_trainable
from keras_helpers import (
    ScriptedMonitor,
    WeightRecorder,
    paths_of,
    tiny_backbone,
    tiny_data,
    tiny_model,
    weights_of,
)

LR0 = 0.05
SCRIPT = [1.0, 0.9, 0.95, 0.8, 0.85, 0.9, 0.7, 0.75]
UNFREEZE_EPOCH = {2: 3, 1: 5, 0: 6}  # group -> epoch whose end unfroze it
BEST_BEFORE = {3: 2, 5: 4, 6: 4, 8: 7}  # epoch -> best epoch restored at its end


def _bn_stat_paths(model: keras.Model) -> list[str]:
    return [
        v.path
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in layer.non_trainable_weights
    ]


@pytest.fixture(scope="module")
def scripted_run():
    model, backbone = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(LR0), loss="categorical_crossentropy")
    x, y = tiny_data()
    initial = weights_of(model)
    before, after = WeightRecorder(), WeightRecorder()
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.5, verbose=0)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=20,
        shuffle=False,
        verbose=0,
        callbacks=[ScriptedMonitor(SCRIPT), before, cb, after],
    )
    return model, backbone, cb, history, initial, before, after


def test_decisions_follow_the_scheduler_trace(scripted_run):
    _, _, cb, history, *_ = scripted_run
    trace = [
        (d.epoch, d.improved, d.newly_unfrozen, d.restore_best, d.stop)
        for d in cb.scheduler.history
    ]
    assert trace == [
        (1, True, (), False, False),
        (2, True, (), False, False),
        (3, False, (2,), True, False),
        (4, True, (), False, False),
        (5, False, (1,), True, False),
        (6, False, (0,), True, False),
        (7, True, (), False, False),
        (8, False, (), True, True),
    ]
    assert len(history.history["loss"]) == 8
    assert history.history["dynft_unfrozen"] == [0, 0, 1, 1, 2, 3, 3, 3]


def test_learning_rate_after_r_unfreezes(scripted_run):
    model, _, _, history, *_ = scripted_run
    unfreezes = [0, 0, 1, 1, 2, 3, 3, 3]
    expected = [LR0 * 0.5**r for r in unfreezes]
    np.testing.assert_allclose(history.history["lr"], expected, rtol=1e-6)
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr == pytest.approx(LR0 * 0.5**3, rel=1e-6)
    rates = model.optimizer.learning_rates()
    assert list(rates) == ["head", "unfreeze 1", "unfreeze 2", "unfreeze 3"]
    np.testing.assert_allclose(list(rates.values()), [LR0 * 0.5**3] * 4, rtol=1e-6)
    assert isinstance(model.optimizer, FineTuningOptimizer)
    assert all(
        isinstance(o, keras.optimizers.Adam)
        for o in (model.optimizer.head, *model.optimizer.group_optimizers)
    )


def test_groups_stay_frozen_until_their_unfreeze(scripted_run):
    _, backbone, _, _, initial, before, _ = scripted_run
    for group, unfreeze_epoch in UNFREEZE_EPOCH.items():
        for path in paths_of(backbone.get_layer(f"conv{group}")):
            # Pre-action weights of epochs 1..unfreeze_epoch: trained while frozen.
            for epoch in range(1, unfreeze_epoch + 1):
                np.testing.assert_array_equal(before.epochs[epoch - 1][path], initial[path])


def test_newly_unfrozen_groups_change_inside_the_same_fit(scripted_run):
    _, backbone, _, _, initial, before, _ = scripted_run
    for group, unfreeze_epoch in UNFREEZE_EPOCH.items():
        kernel = backbone.get_layer(f"conv{group}").kernel.path
        trained = before.epochs[unfreeze_epoch][kernel]  # end of the next epoch
        assert np.max(np.abs(trained - initial[kernel])) > 1e-4, f"conv{group} did not train"


def test_batch_norm_statistics_never_change(scripted_run):
    model, _, _, _, initial, before, after = scripted_run
    final = weights_of(model)
    stats = _bn_stat_paths(model)
    assert len(stats) == 12  # gamma, beta and the moving statistics of bn0..bn2
    for path in stats:
        for record in before.epochs + after.epochs + [final]:
            np.testing.assert_array_equal(record[path], initial[path])


def test_a_rollback_is_in_place_when_the_next_epoch_begins(scripted_run):
    _, _, _, _, _, before, after = scripted_run
    for epoch, best in BEST_BEFORE.items():
        # Callbacks after it still see the weights the epoch trained, under its number ...
        for path, value in before.epochs[epoch - 1].items():
            np.testing.assert_array_equal(after.epochs[epoch - 1][path], value, err_msg=path)
        if epoch == len(SCRIPT):
            continue  # the last rollback is the end of training (checked below)
        # ... and the next epoch starts from the best epoch's weights.
        restored, best_weights = after.epoch_begins[epoch], before.epochs[best - 1]
        for path, value in best_weights.items():
            np.testing.assert_array_equal(restored[path], value, err_msg=f"{path} at {epoch}")


def test_final_weights_are_the_best_epochs(scripted_run):
    model, _, cb, _, _, before, _ = scripted_run
    assert cb.scheduler.best_epoch == 7
    final = weights_of(model)
    for path, value in before.epochs[7 - 1].items():
        np.testing.assert_array_equal(final[path], value, err_msg=path)


def test_budget_from_fit_epochs_keeps_deep_groups_only():
    model, backbone = tiny_model(seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x, y = tiny_data(seed=1)
    initial = weights_of(model)
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.0, verbose=0)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        verbose=0,
        callbacks=[ScriptedMonitor([1.0, 1.1, 0.9, 0.8]), cb],
    )
    assert cb.scheduler.max_epochs == 4
    assert cb.scheduler.num_unfrozen == 1
    assert cb.scheduler.history[-1].stop
    final = weights_of(model)
    for group in (0, 1):
        for path in paths_of(backbone.get_layer(f"conv{group}")):
            np.testing.assert_array_equal(final[path], initial[path])
    kernel = backbone.get_layer("conv2").kernel.path
    assert np.max(np.abs(final[kernel] - initial[kernel])) > 1e-4
    trainable = {
        name: backbone.get_layer(name).trainable
        for name in ("conv0", "conv1", "conv2", "bn0", "bn1", "bn2")
    }
    assert trainable == {
        "conv0": False,
        "conv1": False,
        "conv2": True,
        "bn0": False,
        "bn1": False,
        "bn2": False,
    }


def test_snapshot_holds_trainable_weights_and_head_batch_norm_statistics():
    backbone = tiny_backbone()
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    apply_trainable(backbone, resolve_groups(backbone, "layers"), 1)
    paths = {v.path for v in changeable_variables(model)}
    assert paths == {
        "conv2/kernel",
        "conv2/bias",
        "head_bn/gamma",
        "head_bn/beta",
        "head_bn/moving_mean",
        "head_bn/moving_variance",
        "head/kernel",
        "head/bias",
    }
    snapshot = WeightSnapshot()
    snapshot.capture(changeable_variables(model), epoch=1)
    assert snapshot.nbytes == 4 * (3 * 3 * 4 * 4 + 4 + 4 * 4 + 4 * 3 + 3)


def test_batch_norm_inside_an_unfrozen_container_stays_frozen():
    # Flat "layers"/"blocks" groups never hold a BatchNormalization; a group holding a
    # nested block does, and making that block trainable recurses into its BN.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for index in range(2):
        block = keras.Sequential(
            [
                keras.layers.Conv2D(4, 3, padding="same", name=f"conv{index}"),
                keras.layers.BatchNormalization(name=f"bn{index}"),
            ],
            name=f"block{index}",
        )
        x = block(x)
    backbone = keras.Model(inputs, x, name="backbone")
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(features))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x_train, y_train = tiny_data()
    initial = weights_of(model)
    cb = DynamicFineTuning(
        backbone, groups=[["block0"], ["block1"]], patience=1, step=2, decay=0.5, verbose=0
    )
    model.fit(
        x_train,
        y_train,
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[ScriptedMonitor([1.0, 1.1, 0.9]), cb],
    )
    assert cb.scheduler.num_unfrozen == 2
    final = weights_of(model)
    stats = _bn_stat_paths(model)
    assert len(stats) == 8
    for path in stats:
        np.testing.assert_array_equal(final[path], initial[path], err_msg=path)
    for index in range(2):
        block = backbone.get_layer(f"block{index}")
        assert block.get_layer(f"bn{index}").trainable is False
        kernel = block.get_layer(f"conv{index}").kernel.path
        assert np.max(np.abs(final[kernel] - initial[kernel])) > 1e-4, kernel


def test_freeze_takes_effect_when_the_train_function_already_exists():
    # A fit before this one built the optimizer and the train function for every
    # variable; freezing at train begin must replace both, or epoch 1 trains the backbone.
    model, backbone = tiny_model(seed=2)
    model.compile(optimizer=keras.optimizers.Adam(LR0), loss="categorical_crossentropy")
    x, y = tiny_data(seed=2)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    warmed = weights_of(model)
    cb = DynamicFineTuning(backbone, patience=5, verbose=0)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[ScriptedMonitor([1.0, 1.1]), cb],
    )
    final = weights_of(model)
    for path in (v.path for v in backbone.weights):
        np.testing.assert_array_equal(final[path], warmed[path], err_msg=path)
    kernel = model.get_layer("head").kernel.path
    assert np.max(np.abs(final[kernel] - warmed[kernel])) > 1e-4

"""MobileNetV2 with the real ImageNet weights (skipped when the shared file is absent)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import shared_file
from dynft_keras import DynamicFineTuning
from keras_helpers import ScriptedMonitor, WeightRecorder, weights_of

WEIGHTS = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@pytest.mark.shared
@pytest.mark.slow
def test_pretrained_mobilenet_v2_blocks_unfreeze_from_the_top():
    path = shared_file(WEIGHTS)
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    base.load_weights(str(path))
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    pretrained = weights_of(model)
    assert np.abs(pretrained[base.get_layer("Conv1").kernel.path]).max() > 0.1

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(8, 96, 96, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    before = WeightRecorder()
    cb = DynamicFineTuning(base, groups="blocks", patience=1, step=2, decay=0.1, verbose=0)
    history = model.fit(
        images,
        labels,
        batch_size=4,
        epochs=3,
        verbose=0,
        callbacks=[ScriptedMonitor([1.0, 1.1, 0.9]), before, cb],
    )

    assert [[layer.name for layer in g] for g in cb.groups[-2:]] == [
        ["block_16_expand", "block_16_depthwise", "block_16_project"],
        ["Conv_1"],
    ]
    assert history.history["dynft_unfrozen"] == [0, 2, 2]
    np.testing.assert_allclose(history.history["lr"], [1e-3, 9e-4, 9e-4], rtol=1e-6)
    final = weights_of(model)
    unfrozen = {v.path for group in cb.groups[-2:] for layer in group for v in layer.weights}
    changed = {p for p in unfrozen if np.max(np.abs(final[p] - pretrained[p])) > 0}
    assert changed == unfrozen
    bn_stats = [
        v.path
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in layer.weights
    ]
    frozen = [v.path for v in base.weights if v.path not in unfrozen]
    assert len(bn_stats) == 52 * 4 and set(bn_stats) <= set(frozen)
    for p in frozen:
        np.testing.assert_array_equal(final[p], pretrained[p], err_msg=p)
    # Epoch 3 improved and the budget ended the run: the final model is epoch 3's.
    for p, value in before.epochs[2].items():
        np.testing.assert_array_equal(final[p], value, err_msg=p)

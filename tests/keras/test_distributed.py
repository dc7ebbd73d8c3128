"""MirroredStrategy on two logical CPU devices (TensorFlow backend only)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from keras_helpers import (
    BACKEND,
    ScriptedMonitor,
    WeightRecorder,
    paths_of,
    tiny_data,
    tiny_model,
    weights_of,
)

pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute.MirroredStrategy exists on TensorFlow only"
)


def test_unfreeze_takes_effect_under_mirrored_strategy():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model, backbone = tiny_model()
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data()
    initial = weights_of(model)
    before, after = WeightRecorder(), WeightRecorder()
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.5, verbose=0)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[ScriptedMonitor([1.0, 1.1, 0.9, 0.8]), before, cb, after],
    )

    assert history.history["dynft_unfrozen"] == [0, 1, 1, 1]
    np.testing.assert_allclose(history.history["lr"], [0.05, 0.025, 0.025, 0.025], rtol=1e-6)
    # The head's and the unfrozen group's optimizers (and their slots) are mirrored.
    for variable in model.optimizer.variables:
        assert isinstance(variable.value, tf.distribute.DistributedValues), variable.path
    final = weights_of(model)
    kernel = backbone.get_layer("conv2").kernel.path
    assert np.max(np.abs(final[kernel] - initial[kernel])) > 1e-4
    for name in ("conv0", "conv1", "bn0", "bn1", "bn2"):
        for path in paths_of(backbone.get_layer(name)):
            np.testing.assert_array_equal(final[path], initial[path])
    # The unfreeze after epoch 2 restored epoch 1 (before epoch 3 trained); the budget stop
    # kept epoch 4, the best.
    for path, value in before.epochs[0].items():
        np.testing.assert_array_equal(after.epoch_begins[2][path], value, err_msg=path)
    for path, value in before.epochs[3].items():
        np.testing.assert_array_equal(final[path], value, err_msg=path)

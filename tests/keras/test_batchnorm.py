"""BatchNormalization: frozen by default, trained with its group under train_batchnorm=True,
and a warning for a frozen one whose gamma is zero."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from keras_helpers import ScriptedMonitor, tiny_data, tiny_model, weights_of

SCRIPT = [1.0, 1.1, 0.9, 0.8]  # patience 1: epoch 2 unfreezes conv2 (and bn2 if trained)


def _fit(model, backbone, **options):
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.5, verbose=0, **options)
    model.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0,
              callbacks=[ScriptedMonitor(SCRIPT), cb])  # fmt: skip
    return cb


def _changed(before, after, layer):
    return {v.name for v in layer.weights if not np.array_equal(before[v.path], after[v.path])}


@pytest.mark.parametrize("train_batchnorm", [False, True])
def test_batch_norm_trains_with_its_group_only_when_asked(train_batchnorm):
    model, backbone = tiny_model()
    initial = weights_of(model)
    cb = _fit(model, backbone, train_batchnorm=train_batchnorm)
    final = weights_of(model)
    bn2 = backbone.get_layer("bn2")
    expected = {"gamma", "beta", "moving_mean", "moving_variance"} if train_batchnorm else set()
    assert _changed(initial, final, bn2) == expected
    assert bn2.trainable is train_batchnorm
    for name in ("bn0", "bn1"):  # their groups stayed frozen
        assert _changed(initial, final, backbone.get_layer(name)) == set()
    assert ("[bn2]" in cb.group_table()) is train_batchnorm


def test_a_frozen_batch_norm_with_zero_gamma_is_reported():
    model, backbone = tiny_model()
    gamma = backbone.get_layer("bn1").gamma
    gamma.assign(keras.ops.zeros(gamma.shape))
    with pytest.warns(UserWarning, match=r"BatchNormalization layer\(s\) \['bn1'\].*gamma = 0"):
        _fit(model, backbone)

"""Every model shape: nested base, flattened functional base, layer lists and layer names;
the keras.io transfer-learning guide rewritten with dynft, nested and flattened; the group
table."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from keras_helpers import (
    IMAGE,
    ScriptedMonitor,
    WeightRecorder,
    tiny_backbone,
    tiny_data,
    tiny_model,
    weights_of,
)

SCRIPT = [1.0, 1.1, 0.9, 0.8]  # patience 1: epoch 2 unfreezes conv2, the rest improve


def _flattened():
    keras.utils.set_random_seed(0)
    base = tiny_backbone()
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(base.input, outputs, name="flat"), base


def _run(model, backbone_arg):
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data()
    initial = weights_of(model)
    cb = DynamicFineTuning(backbone_arg, patience=1, step=1, decay=0.5, verbose=0)
    model.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0,
              callbacks=[ScriptedMonitor(SCRIPT), cb])  # fmt: skip
    return cb, initial, weights_of(model)


@pytest.mark.parametrize(
    "backbone_of",
    [
        lambda model, base: base,  # the base model whose layers were inlined
        lambda model, base: model.layers[1:-2],  # a layer range of the fitted model
        lambda model, base: [layer.name for layer in model.layers[1:-2]],  # layer names
    ],
    ids=["base-model", "layer-range", "layer-names"],
)
def test_flattened_functional_model_unfreezes_its_inlined_layers(backbone_of):
    model, base = _flattened()
    assert not any(layer is base for layer in model.layers)
    cb, initial, final = _run(model, backbone_of(model, base))
    assert [[layer.name for layer in g] for g in cb.groups] == [["conv0"], ["conv1"], ["conv2"]]
    assert cb.scheduler.num_unfrozen == 1
    changed = {path for path in final if not np.array_equal(final[path], initial[path])}
    assert changed == {"conv2/kernel", "conv2/bias", "head/kernel", "head/bias"}


def test_nested_base_and_the_group_table():
    model, backbone = tiny_model()
    cb, _, _ = _run(model, backbone)
    lines = cb.group_table().splitlines()
    assert lines[0].split() == ["group", "layers", "parameters", "state"]
    assert lines[1].split() == ["0", "conv0", "112", "frozen"]
    assert lines[2].split() == ["1", "conv1", "148", "frozen"]
    assert lines[3].split() == ["2", "conv2", "148", "trainable"]
    assert lines[4] == "3 groups, 408 parameters, 1 unfrozen (deepest first)"


@pytest.mark.parametrize(
    ("backbone", "error", "message"),
    [
        (lambda: tiny_backbone(name="other"), ValueError, "backbone 'other' is not a layer"),
        (lambda: ["conv0", "nope"], ValueError, "'nope', but model 'classifier' has no layer"),
        (lambda: "conv0", TypeError, "backbone must be a keras Layer or Model, a list"),
        (lambda: [], ValueError, "backbone is an empty list"),
    ],
)
def test_a_backbone_not_in_the_model_is_refused(backbone, error, message):
    model, _ = tiny_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    with pytest.raises(error, match=message):
        cb = DynamicFineTuning(backbone(), verbose=0)
        model.fit(*tiny_data(count=4), epochs=1, verbose=0, callbacks=[cb])


def _guide_base():
    keras.utils.set_random_seed(0)
    return tiny_backbone()


def _guide_head(features):
    x = keras.layers.GlobalAveragePooling2D()(features)
    x = keras.layers.Dropout(0.2)(x)
    return keras.layers.Dense(1, name="logit")(x)


def _guide_nested():
    base = _guide_base()
    base.trainable = False  # the guide freezes the base; dynft takes over from there
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    return keras.Model(inputs, _guide_head(base(x, training=False))), base


def _guide_flattened():
    base = _guide_base()
    return keras.Model(base.input, _guide_head(base.output)), base


@pytest.mark.parametrize("build", [_guide_nested, _guide_flattened], ids=["nested", "flattened"])
def test_keras_io_transfer_learning_guide_with_dynft(build):
    """The guide's two fits (head at 1e-3, then everything at 1e-5) as one fit with dynft."""
    model, base = build()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy()],
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(40, IMAGE, IMAGE, 3)).astype("float32")
    labels = rng.integers(0, 2, size=(40, 1)).astype("float32")
    initial = weights_of(model)
    recorder = WeightRecorder()
    # min_delta=1 makes every epoch after the first a miss: three unfreezes, then the stop.
    cb = DynamicFineTuning(base, monitor="val_binary_accuracy", patience=1, step=1,
                           min_delta=1.0, unfrozen_lr_ratio=0.01, verbose=0)  # fmt: skip
    model.fit(images[:32], labels[:32], validation_data=(images[32:], labels[32:]),
              epochs=10, batch_size=8, verbose=0, callbacks=[recorder, cb])  # fmt: skip
    assert cb.scheduler.mode == "max"  # mode="auto" read it off "accuracy"
    assert [d.num_unfrozen for d in cb.scheduler.history] == [0, 1, 2, 3, 3]
    rates = model.optimizer.learning_rates()
    assert rates == pytest.approx(
        {"head": 1e-3 * 0.9**3, **{f"unfreeze {i}": 1e-5 * 0.9**3 for i in (1, 2, 3)}}
    )
    for epoch in (2, 3, 4):  # each unfrozen group trained in the epoch after its unfreeze
        kernel = f"conv{4 - epoch}/kernel"
        assert not np.array_equal(recorder.epochs[epoch][kernel], initial[kernel])
    final = weights_of(model)
    for path, value in recorder.epochs[0].items():  # epoch 1 stayed the best
        np.testing.assert_array_equal(final[path], value, err_msg=path)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable
            for variable in layer.weights:
                np.testing.assert_array_equal(final[variable.path], initial[variable.path])

"""Group resolution: "layers", "blocks" of keras.applications families, explicit lists, errors."""

from __future__ import annotations

import keras
import pytest
from dynft_keras import DynamicFineTuning, resolve_groups
from keras_helpers import BACKEND, tiny_backbone, tiny_model

APPS = keras.applications


def _names(groups):
    return [[layer.name for layer in group] for group in groups]


def test_layers_mode_counts_weighted_layers_without_batch_norm():
    backbone = tiny_backbone()
    assert _names(resolve_groups(backbone, "layers")) == [["conv0"], ["conv1"], ["conv2"]]


def test_layers_mode_descends_into_nested_models():
    inner = tiny_backbone(name="inner")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(3, 1, name="adapter")(inputs)
    outer = keras.Model(inputs, inner(x), name="outer")
    assert _names(resolve_groups(outer, "layers")) == [["adapter"], ["conv0"], ["conv1"], ["conv2"]]


ON_TENSORFLOW_ONLY = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="block naming is backend-independent; the large builds run once, on TensorFlow",
)


@ON_TENSORFLOW_ONLY
def test_mobilenet_v2_layers_and_blocks():
    base = APPS.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    layers = resolve_groups(base, "layers")
    # Conv1, 2 convs in block 0, 3 in each of blocks 1..16, Conv_1.
    assert len(layers) == 1 + 2 + 16 * 3 + 1 == 52
    assert not any(isinstance(g[0], keras.layers.BatchNormalization) for g in layers)
    blocks = _names(resolve_groups(base, "blocks"))
    assert len(blocks) == 19
    assert blocks[0] == ["Conv1"]
    assert blocks[1] == ["expanded_conv_depthwise", "expanded_conv_project"]
    assert blocks[2] == ["block_1_expand", "block_1_depthwise", "block_1_project"]
    assert blocks[-1] == ["Conv_1"]


FAMILIES = [
    # (constructor, input size, number of blocks, first group, a group in the middle)
    (APPS.ResNet50, 32, 17, ["conv1_conv"], "conv2_block1"),
    (APPS.DenseNet121, 32, 62, ["conv1_conv"], "pool2"),
    (APPS.Xception, 71, 14, ["block1_conv1", "block1_conv2"], "block2"),
    (APPS.InceptionV3, 75, 11, None, None),
    (APPS.VGG16, 32, 5, ["block1_conv1", "block1_conv2"], "block3"),
    (APPS.EfficientNetV2B0, 32, 23, ["stem_conv"], "block2b"),
]


@ON_TENSORFLOW_ONLY
@pytest.mark.parametrize(("build", "size", "count", "first", "middle"), FAMILIES)
def test_blocks_of_keras_applications_families(build, size, count, first, middle):
    base = build(include_top=False, weights=None, input_shape=(size, size, 3))
    groups = resolve_groups(base, "blocks")
    assert len(groups) == count
    flat = [layer for group in groups for layer in group]
    assert len(flat) == len({id(layer) for layer in flat})
    assert flat == [g[0] for g in resolve_groups(base, "layers")]  # same layers, same order
    if first is not None:
        assert _names(groups)[0] == first
    if middle is not None:
        members = next(g for g in _names(groups) if g[0].startswith(middle + "_"))
        if build is APPS.Xception:
            # The unnamed shortcut convolution sits inside block 2 and joins it.
            assert members[:2] == ["block2_sepconv1", "block2_sepconv2"]
            assert len(members) == 3 and members[2].startswith("conv2d")
        else:
            assert all(name.startswith(middle + "_") for name in members)


@ON_TENSORFLOW_ONLY
def test_inception_v3_blocks_end_at_mixed_concatenations():
    base = APPS.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    groups = resolve_groups(base, "blocks")
    order = {id(layer): index for index, layer in enumerate(base.layers)}
    for number, group in enumerate(groups):
        boundary = order[id(base.get_layer(f"mixed{number}"))]
        assert all(order[id(layer)] < boundary for layer in group)
        if number:
            previous = order[id(base.get_layer(f"mixed{number - 1}"))]
            assert all(order[id(layer)] > previous for layer in group)


def test_explicit_groups_by_name_and_by_layer():
    backbone = tiny_backbone()
    groups = resolve_groups(backbone, [["conv0", backbone.get_layer("conv1")], ["conv2"]])
    assert _names(groups) == [["conv0", "conv1"], ["conv2"]]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("everything", ValueError, r"groups must be one of \('layers', 'blocks'\)"),
        ("blocks", ValueError, "found no known block names"),
        ([], ValueError, "empty list"),
        ([["conv0"], []], ValueError, r"groups\[1\] is empty"),
        ([["conv0"], ["conv9"]], ValueError, "no layer of that name"),
        ([["conv0"], ["conv1", "conv0"]], ValueError, r"in groups\[0\] and groups\[1\]"),
        (["conv0"], TypeError, "must be a list of layers or layer names"),
        ([[3]], TypeError, "entries must be layers or layer names"),
        (3, TypeError, r"groups must be one of \('layers', 'blocks'\) or a list .* got int: 3"),
    ],
)
def test_group_errors(spec, error, message):
    with pytest.raises(error, match=message):
        resolve_groups(tiny_backbone(), spec)


def test_layer_outside_the_backbone_is_rejected():
    stranger = keras.layers.Dense(2, name="stranger")
    with pytest.raises(ValueError, match="'stranger', which is not inside backbone"):
        resolve_groups(tiny_backbone(), [[stranger]])


def test_backbone_without_weights_is_rejected():
    inputs = keras.Input((4,))
    empty = keras.Model(inputs, keras.layers.ReLU()(inputs), name="empty")
    with pytest.raises(ValueError, match="nothing to unfreeze"):
        resolve_groups(empty, "layers")


def test_backbone_outside_the_model_fails_at_fit():
    model, _ = tiny_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    cb = DynamicFineTuning(tiny_backbone(name="other"), verbose=0)
    with pytest.raises(ValueError, match="backbone 'other' is not a layer of model 'classifier'"):
        model.fit(
            keras.ops.zeros((2, 8, 8, 3)),
            keras.ops.zeros((2, 3)),
            epochs=1,
            verbose=0,
            callbacks=[cb],
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patience": 0}, "patience must be an integer >= 1"),
        ({"decay": 1.0}, "decay must be a number with 0 <= decay < 1"),
        ({"mode": "up"}, "mode"),
        ({"max_epochs": 0}, "max_epochs must be an integer >= 1"),
        ({"verbose": 3}, "verbose must be 0, 1 or 2"),
    ],
)
def test_invalid_callback_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicFineTuning(tiny_backbone(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": 3}, r"groups must be one of \('layers', 'blocks'\) or a list .* got int: 3"),
        ({"backup_dir": 3}, r"backup_dir must be None or a folder path .* got int: 3"),
    ],
)
def test_callback_arguments_of_the_wrong_type_fail_at_construction(kwargs, message):
    with pytest.raises(TypeError, match=message):
        DynamicFineTuning(tiny_backbone(), **kwargs)

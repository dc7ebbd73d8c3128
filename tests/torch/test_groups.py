"""Group resolution: torchvision, timm and EfficientNet-Lite families, per-module, explicit."""

from __future__ import annotations

import pytest
import torch
import torchvision
from dynft_torch import DynamicFineTuner, resolve_groups
from tiny_models import TinyNet
from torch import nn


def names(model, backbone=None, groups="auto"):
    return [g.name for g in resolve_groups(model, backbone, groups)]


def assert_partition(model, groups, head_prefixes):
    """Every non-head parameter is in exactly one group; head parameters in none."""
    grouped = [n for g in groups for n in g.parameter_names]
    assert len(grouped) == len(set(grouped))
    rest = [n for n, _ in model.named_parameters() if n not in set(grouped)]
    assert rest and all(n.startswith(head_prefixes) for n in rest), rest


@pytest.mark.parametrize(
    ("builder", "count", "first", "last"),
    [
        ("mobilenet_v2", 19, "features.0", "features.18"),
        ("mobilenet_v3_small", 13, "features.0", "features.12"),
        ("efficientnet_b0", 9, "features.0", "features.8"),
        ("resnet18", 9, "conv1+bn1", "layer4.1"),
        (
            "densenet121",
            62,
            "features.conv0+features.norm0",
            "features.denseblock4.denselayer16+features.norm5",
        ),
        ("vgg11_bn", 8, "features.0+features.1", "features.25+features.26"),
        ("vgg11", 8, "features.0", "features.18"),
    ],
)
def test_torchvision_families(builder, count, first, last):
    model = getattr(torchvision.models, builder)(weights=None)
    groups = resolve_groups(model)
    assert (len(groups), groups[0].name, groups[-1].name) == (count, first, last)
    assert_partition(model, groups, ("classifier", "fc"))


def test_inception_uses_top_level_blocks_without_aux_head():
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    groups = resolve_groups(model)
    assert [g.name for g in groups][:3] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"]
    assert [g.name for g in groups][-3:] == ["Mixed_7a", "Mixed_7b", "Mixed_7c"]
    assert_partition(model, groups, ("fc", "AuxLogits"))


def test_backbone_given_as_features_module_or_name():
    model = torchvision.models.mobilenet_v2(weights=None)
    assert names(model, model.features) == names(model, "features") == names(model)


def test_resnet_bottlenecks_with_backbone_inside_a_wrapper():
    wrapper = nn.Module()
    wrapper.net = torchvision.models.resnet50(weights=None)
    groups = names(wrapper, wrapper.net)
    assert len(groups) == 1 + 3 + 4 + 6 + 3
    assert groups[:2] == ["net.conv1+net.bn1", "net.layer1.0"]
    with pytest.raises(ValueError, match="backbone parameters are in no group"):
        DynamicFineTuner(
            wrapper,
            torch.optim.SGD(wrapper.parameters(), lr=0.1),
            wrapper.net,
            groups=["net.layer4"],
        )


def test_timm_group_matcher():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    groups = resolve_groups(model)
    assert len(groups) == 9
    assert groups[0].parameter_names == ("conv1.weight", "bn1.weight", "bn1.bias")
    assert groups[-1].name == "layer4.1"
    assert_partition(model, groups, ("fc",))


def test_efficientnet_lite_blocks():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name("efficientnet-lite0", num_classes=3)
    groups = names(model)
    assert groups[0] == "_conv_stem+_bn0" and groups[-1] == "_conv_head+_bn1"
    assert groups[1:-1] == [f"_blocks.{i}" for i in range(len(model._blocks))]
    assert_partition(model, resolve_groups(model), ("_fc",))


def test_modules_mode_is_one_group_per_leaf_module_with_parameters():
    model = TinyNet()
    groups = resolve_groups(model, model.backbone, "modules")
    assert [g.name for g in groups] == [f"backbone.{b}.{i}" for b in range(4) for i in (0, 1)]


def test_fallback_leaf_modules_merge_batchnorm_only_groups():
    model = nn.Sequential()
    model.add_module("a", nn.Linear(4, 4))
    model.add_module("b", nn.BatchNorm1d(4))
    model.add_module("c", nn.Linear(4, 4))
    model.add_module("fc", nn.Linear(4, 2))
    groups = resolve_groups(model)
    assert [g.module_names for g in groups] == [("a", "b"), ("c",)]


def test_explicit_groups_by_module_and_name():
    model = TinyNet()
    groups = resolve_groups(
        model, model.backbone, [[model.backbone[0], "backbone.1"], "backbone.2", model.backbone[3]]
    )
    assert [g.module_names for g in groups] == [
        ("backbone.0", "backbone.1"),
        ("backbone.2",),
        ("backbone.3",),
    ]


def test_clear_errors():
    model = TinyNet()
    with pytest.raises(ValueError, match="not a submodule of the model"):
        resolve_groups(model, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown name 'backbone.9' in groups"):
        resolve_groups(model, model.backbone, ["backbone.0", "backbone.9"])
    with pytest.raises(ValueError, match="group 1 is empty"):
        resolve_groups(model, model.backbone, ["backbone", []])
    with pytest.raises(ValueError, match="is in group 0 and group 1"):
        resolve_groups(model, model.backbone, ["backbone", "backbone.3"])
    with pytest.raises(ValueError, match="owns no parameters"):
        resolve_groups(model, None, ["backbone.0.2", "backbone"])
    with pytest.raises(ValueError, match="outside the backbone"):
        resolve_groups(model, model.backbone, ["head", "backbone"])
    with pytest.raises(ValueError, match="groups must be one of"):
        resolve_groups(model, model.backbone, "layer")
    with pytest.raises(TypeError, match="got int"):
        resolve_groups(model, model.backbone, [3])
    with pytest.raises(ValueError, match=r"pattern 'backbone.7.\*' in groups matches no parameter"):
        resolve_groups(model, model.backbone, ["backbone.7.*"])
    with pytest.raises(ValueError, match="tensor of shape \\(2,\\) in groups is not a parameter"):
        resolve_groups(model, model.backbone, [[torch.zeros(2)]])
    with pytest.raises(ValueError, match="Sequential is not a submodule"):
        resolve_groups(model, model.backbone, [nn.Sequential(model.backbone[0], nn.Linear(2, 2))])


def test_sequential_slices_parameter_lists_names_and_patterns():
    model = torchvision.models.mobilenet_v2(weights=None)
    features = model.features
    slices = [features[0:6], features[6:12], features[12:]]
    by_slices = resolve_groups(model, features, slices)
    assert [g.module_names[0] for g in by_slices] == ["features.0", "features.6", "features.12"]
    by_parameters = resolve_groups(model, features, [list(s.parameters()) for s in slices])
    patterns = ["features.[0-5].*", "features.[6-9].*", "features.1[01].*", "features.1[2-8].*"]
    by_patterns = resolve_groups(model, features, [patterns[:1], patterns[1:3], patterns[3:]])
    for groups in (by_parameters, by_patterns):
        assert [g.parameter_names for g in groups] == [g.parameter_names for g in by_slices]
    tiny = TinyNet()
    mixed = resolve_groups(
        tiny,
        tiny.backbone,
        [
            ["backbone.0.0.weight", tiny.backbone[0][1].weight, tiny.backbone[0][1].bias],
            tiny.backbone[1:3],
            "backbone.3",
        ],
    )
    assert [len(g.parameter_names) for g in mixed] == [3, 6, 3]
    assert mixed[0].module_names == ("backbone.0.0", "backbone.0.1")
    # BatchNorm found through the parameters' owners is frozen like any other
    model = TinyNet()
    tuner = DynamicFineTuner(
        model, torch.optim.SGD(model.parameters(), lr=0.1), model.backbone, ["backbone.*"]
    )
    assert len(tuner.batchnorm.layers) == 4


@pytest.mark.parametrize(
    ("builder", "count"), [("resnet18", 20), ("mobilenet_v2", 52), ("densenet121", 120)]
)
def test_layers_mode_is_one_group_per_weight_layer_with_the_batchnorms_after_it(builder, count):
    model = getattr(torchvision.models, builder)(weights=None)
    backbone = model.features if hasattr(model, "features") else None
    groups = resolve_groups(model, backbone, "layers")
    # the paper's Table 3 unit: ResNet-18 has 20 convolutions (fc is the head), MobileNetV2's
    # features 52, DenseNet-121's 120
    assert len(groups) == count
    modules = dict(model.named_modules())
    root = "features" if backbone is not None else ""
    owners = [
        name
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
        and name.startswith(root)
        and not name.startswith(("fc", "classifier"))
    ]
    # registration order kept, every module owning weights in exactly one group
    assert [name for group in groups for name in group.module_names] == owners
    for group in groups:
        first, *rest = (modules[name] for name in group.module_names)
        assert isinstance(first, nn.Conv2d) and all(isinstance(m, nn.BatchNorm2d) for m in rest)
    if builder == "resnet18":  # a downsample's BatchNorm rides with its own convolution
        (downsample,) = [g for g in groups if g.module_names[0] == "layer2.0.downsample.0"]
        assert downsample.module_names == ("layer2.0.downsample.0", "layer2.0.downsample.1")
    assert_partition(model, groups, ("classifier", "fc"))


def test_group_table_lists_every_group_with_its_size_and_state():
    model = TinyNet()
    tuner = DynamicFineTuner(
        model, torch.optim.SGD(model.parameters(), lr=0.1), model.backbone, patience=1, step=1
    )
    tuner.step(1.0)
    tuner.step(2.0)
    lines = tuner.group_table().splitlines()
    assert lines[0].split() == ["group", "name", "parameters", "state"]
    assert lines[1].split() == ["0", "backbone.0", "232", "frozen"]
    assert lines[4].split()[:4] == ["3", "backbone.3", "592", "trainable"]
    assert "(16 BatchNorm parameters frozen)" in lines[4]
    assert lines[5].split() == ["head", "(outside", "the", "groups)", "27", "trainable"]

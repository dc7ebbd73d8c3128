"""The study's PyTorch layers are the adapter's groups="layers": the Table 3 top-n counting."""

from __future__ import annotations

import pytest
import torch
from study_helpers import TinyFeatures
from torch import nn

from benchmarks.study.config import StudyConfigError
from benchmarks.study.models.torch_backbones import TorchClassifier, build_classifier
from benchmarks.study.paper_defaults import TOP_N_TORCH
from benchmarks.study.runners import torch_runner


@pytest.mark.parametrize(
    ("backbone", "count"), [("efficientnet_lite0", 49), ("mobilenet_v2", 52), ("resnet50", 53)]
)
def test_the_traditional_top_n_trains_the_top_weight_layers_of_table_3(backbone, count):
    model, _ = build_classifier(backbone, "none", 3, 64)
    layers = torch_runner.backbone_layers(model)
    # Lite0: stem + 2 + 15 x 3 block convolutions + head conv; MobileNetV2: 52 convolutions;
    # ResNet-50: conv1 + 16 x 3 + 4 downsample convolutions (the paper's counting)
    assert len(layers) == count
    top_n = TOP_N_TORCH[backbone]
    trainable = torch_runner._train_top(model, layers, top_n)
    names = {id(p): n for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    expected = {
        name
        for layer in layers[-top_n:]
        for name in layer.parameter_names
        if not isinstance(modules[name.rpartition(".")[0]], nn.BatchNorm2d)
    }
    assert {names[id(p)] for p in trainable} == expected | {"head.weight", "head.bias"}
    owners = {modules[name.rpartition(".")[0]] for name in expected}
    assert len(owners) == top_n  # one weight layer (convolution or linear) per counted layer
    assert all(isinstance(m, nn.Conv2d) for m in owners)


class _FeaturesWithAHeadName(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = TinyFeatures()
        self.head = nn.Linear(8, 8)  # named like a head: the adapter leaves it out of the layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_backbone_parameter_outside_every_layer_is_refused():
    model = TorchClassifier(_FeaturesWithAHeadName(), 8, 3)
    with pytest.raises(StudyConfigError, match=r"2 backbone parameters are in no layer"):
        torch_runner.backbone_layers(model)
    assert len(torch_runner.backbone_layers(TorchClassifier(TinyFeatures(), 8, 3))) == 2

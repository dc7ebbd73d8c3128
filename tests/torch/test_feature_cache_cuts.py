"""Where FeatureCache cuts real architectures, and the clear errors where no cut exists."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torchvision
from dynft_torch import DynamicFineTuner, FeatureCache
from dynft_torch.frozen_region import CutError
from tiny_models import TinyNet, conv_block
from torch import nn
from torch.nn import functional as F


def probe_batches(size: int, count: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator)
    return [(images[:4], torch.zeros(4, dtype=torch.long)), (images[4:], torch.ones(2))]


def outputs(cache):
    with torch.no_grad():
        return torch.cat([cache.model(x) for x, _ in cache.batches()])


def walk_the_schedule(model, backbone, groups, size, step):
    """Unfreeze ``step`` groups at a time; at every stage the cache must equal the model."""
    torch.manual_seed(0)
    model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuner = DynamicFineTuner(
        model, optimizer, backbone=backbone, groups=groups, patience=1, step=step, max_epochs=200
    )
    data = probe_batches(size)
    cache = FeatureCache(tuner, data)
    cuts = []
    while True:
        with torch.no_grad():
            expected = torch.cat([model(x) for x, _ in data])
        for _ in range(2):
            assert torch.equal(outputs(cache), expected), f"differs at cut {cache.cut}"
        cuts.append(cache.cut)
        if tuner.step(1.0).stop:
            return cuts, tuner


@pytest.mark.parametrize(
    ("build", "backbone", "groups", "size", "deepest"),
    [
        (
            lambda: torchvision.models.mobilenet_v2(width_mult=0.35),
            "features",
            "auto",
            32,
            "features",
        ),
        (lambda: torchvision.models.resnet18(num_classes=3), None, "auto", 32, "layer4"),
        (lambda: torchvision.models.resnet18(num_classes=3), None, "modules", 32, "layer4"),
        (
            lambda: timm.create_model(
                "vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=4
            ),
            None,
            "auto",
            32,
            "norm",
        ),
    ],
    ids=["mobilenet_v2", "resnet18-blocks", "resnet18-leaf-modules", "timm-vit"],
)
def test_chain_architectures_are_cut_exactly_at_every_stage(build, backbone, groups, size, deepest):
    cuts, tuner = walk_the_schedule(
        build(), backbone, groups, size, step=7 if groups == "modules" else 3
    )
    assert cuts[0] == deepest
    assert cuts[-1] is None
    assert len(set(cuts)) > 2


def test_efficientnet_lite_leaf_groups_fall_back_to_block_boundaries_across_residuals():
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=32, num_classes=3)
    cuts, tuner = walk_the_schedule(model, None, "modules", 32, step=7)
    # a cut inside a block with a residual connection is never kept
    residual = {
        f"_blocks.{i}"
        for i, block in enumerate(model._blocks)
        if block._block_args.id_skip
        and block._block_args.stride in (1, [1])
        and block._block_args.input_filters == block._block_args.output_filters
    }
    inside = [c for c in cuts if c and c.count(".") >= 2 and c.rsplit(".", 1)[0] in residual]
    assert residual and not inside


class InputSkip(nn.Module):
    """The head reads the raw input again: nothing below the head can be cut off."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_block(3, 8), conv_block(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        features = self.backbone(x).mean(dim=(2, 3))
        return self.head(features + x.mean())


class Parallel(nn.Module):
    """Two frozen branches of the input, concatenated after both."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = conv_block(3, 4), conv_block(3, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        both = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(both.mean(dim=(2, 3)))


class FunctionalDropout(TinyNet):
    """Random dropout in forward() itself, outside any module: training mode changes it."""

    def forward(self, x):
        return super().forward(F.dropout(x, 0.5, self.training))


@pytest.mark.parametrize(
    ("model_class", "backbone", "groups", "match"),
    [
        (InputSkip, "backbone", "auto", "skip connection or parallel branch"),
        (Parallel, None, [["left"], ["right"]], "skip connection or parallel branch"),
        (FunctionalDropout, "backbone", "auto", "training mode"),
    ],
    ids=["skip-from-the-input", "parallel-branches", "functional-dropout"],
)
def test_architectures_without_a_cut_get_a_clear_error(model_class, backbone, groups, match):
    model = model_class()
    tuner = DynamicFineTuner(
        model, torch.optim.SGD(model.parameters(), lr=0.1), backbone=backbone, groups=groups
    )
    with pytest.raises(CutError, match=match):
        FeatureCache(tuner, probe_batches(12))


def test_groups_out_of_forward_order_are_refused_at_construction_and_disable_it_later():
    model = TinyNet()
    reversed_groups = [[f"backbone.{i}"] for i in (3, 2, 1, 0)]
    tuner = DynamicFineTuner(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        groups=reversed_groups,
        patience=1,
        step=1,
        max_epochs=20,
    )
    data = probe_batches(12)
    cache = FeatureCache(tuner, data)  # everything frozen: the order does not matter yet
    assert cache.cut == "backbone"
    tuner.step(1.0)
    tuner.step(1.0)  # unfreezes backbone.0, which runs before the frozen blocks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.eval()
        with torch.no_grad():
            expected = torch.cat([model(x) for x, _ in data])
        assert torch.equal(outputs(cache), expected)
    assert any("not a prefix of the forward" in str(w.message) for w in caught)
    assert cache.cut is None
    with pytest.raises(CutError, match="not a prefix of the forward"):
        FeatureCache(tuner, data)

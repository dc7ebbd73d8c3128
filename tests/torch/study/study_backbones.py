"""A tiny backbone for the study tests: two convolutions, each followed by a BatchNorm."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.study.models import torch_backbones

TINY_BACKBONE = "tiny_test_cnn"


class TinyFeatures(nn.Module):
    """A two-conv feature extractor standing in for a user's backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _tiny_build(pretrained: bool, image_size: int) -> nn.Module:
    if pretrained:
        raise OSError("no network in this test")
    return TinyFeatures()


def register_tiny_backbone() -> str:
    """Registers the tiny backbone (random init only) and returns its name."""
    spec = torch_backbones.TorchBackbone(
        TINY_BACKBONE,
        _tiny_build,
        8,
        torch_backbones.imagenet_normalize,
        top_n=1,
        native_size=32,
        imagenet_source="nowhere",
    )
    torch_backbones.register_backbone(spec, replace=True)
    return spec.name

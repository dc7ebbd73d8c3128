"""Helpers of the PyTorch study tests: a tiny backbone (two convolutions, each with a BatchNorm)
and a tiny in-process study."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import torch
from torch import nn

from benchmarks.study import cli
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
    """Register the tiny backbone (random init only); returns its name."""
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


TINY_STUDY = shlex.split(
    "--phantom-images 120 --image-size 32 --epochs 3 --patience 1 --seeds 0 --batch-size 16"
)


def run_tiny_study(backbone: str, weights: str, out: Path | str, *extra: str) -> int:
    """Run the study in process on the tiny phantom set; returns its exit status."""
    return cli.main(
        [
            "--framework",
            "torch",
            "--backbones",
            backbone,
            "--weights",
            weights,
            *extra,
            *TINY_STUDY,
            "--out",
            str(out),
        ]
    )


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


# registered on import, so every test module that imports the name can run it
register_tiny_backbone()

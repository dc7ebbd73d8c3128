"""Small CPU models, data and training helpers shared by the PyTorch adapter tests."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(channels_in: int, channels_out: int, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=bias),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    )


class TinyNet(nn.Module):
    """Four conv-BN-ReLU blocks (the backbone) and a linear head.

    Args:
        num_classes: Output size of the head. Defaults to 3.
        width: Channels of every block. Defaults to 8.
        conv_bias: Give the convolutions a bias (1-D parameters besides BatchNorm's).
    """

    def __init__(self, num_classes: int = 3, width: int = 8, conv_bias: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            conv_block(3, width, conv_bias),
            conv_block(width, width, conv_bias),
            conv_block(width, width, conv_bias),
            conv_block(width, width, conv_bias),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(x)))


def make_data(n: int = 32, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose label is the channel with the largest mean (learnable in a few steps)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = images.mean(dim=(2, 3)).argmax(dim=1)
    return images, labels


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    steps: int = 2,
) -> None:
    """A few full-batch steps in train mode (as a user loop would do)."""
    images, labels = data
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def evaluate(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy in eval mode, as a 0-d tensor."""
    images, labels = data
    model.eval()
    with torch.no_grad():
        return nn.functional.cross_entropy(model(images), labels)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of every parameter and buffer, by name."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_states_equal(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], names=None
) -> None:
    """Bit-identical comparison of the named entries (all by default)."""
    for name in names if names is not None else expected:
        assert torch.equal(actual[name], expected[name]), f"{name} differs"

"""Freezing backbone parameters and keeping the backbone's BatchNorm layers in inference mode.

Why a forward pre-hook: ``model.train()`` (called by most loops and by Lightning every epoch)
recursively flips ``training`` on every submodule, and users also set ``bn.training`` directly.
Overriding ``train`` on instances misses the direct assignment and breaks pickling; a pre-hook
runs right before each BatchNorm forward, whatever flipped the flag, so the layer always
normalises with its running statistics and never updates them. It survives ``state_dict``
round trips, DDP wrapping (hooks live on the inner module) and ``copy.deepcopy``. The one visible
effect is that ``bn.training`` may read ``True`` between ``model.train()`` and the next forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from .groups import BackboneGroup, is_under


def backbone_batchnorms(model: nn.Module, groups: Iterable[BackboneGroup]) -> dict[str, _BatchNorm]:
    """Every ``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants) inside the groups.

    Args:
        model: The whole network.
        groups: The backbone groups.

    Returns:
        Module name -> BatchNorm layer, in registration order.
    """
    prefixes = [name for group in groups for name in group.module_names]
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and any(is_under(name, p) for p in prefixes)
    }


def batchnorm_parameter_names(layers: dict[str, _BatchNorm]) -> set[str]:
    """Names, in the whole model, of the affine parameters of ``layers`` (never unfrozen).

    Args:
        layers: Module name -> BatchNorm layer, from :func:`backbone_batchnorms`.
    """
    return {
        pname
        for name, layer in layers.items()
        for pname, _ in layer.named_parameters(prefix=name, recurse=False)
    }


def _force_inference_mode(module: nn.Module, args: tuple[object, ...]) -> None:
    if module.training:
        module.training = False


class BatchNormFreezer:
    """Keeps BatchNorm layers in inference mode with frozen affine parameters.

    Running mean and variance are then never updated (paper, Eq. 11), whether or not the
    surrounding group has been unfrozen.

    Args:
        layers: Module name -> BatchNorm layer, from :func:`backbone_batchnorms`.
    """

    def __init__(self, layers: dict[str, _BatchNorm]) -> None:
        self.layers = layers
        self._handles: list[RemovableHandle] = []
        for layer in layers.values():
            layer.eval()
            for parameter in layer.parameters(recurse=False):
                freeze_parameter(parameter)
            self._handles.append(layer.register_forward_pre_hook(_force_inference_mode))

    def parameter_names(self) -> set[str]:
        """Names of the affine parameters of the frozen layers."""
        return batchnorm_parameter_names(self.layers)

    def buffer_names(self) -> set[str]:
        """Names of the running statistics (and batch counters) of the frozen layers."""
        return {
            bname
            for name, layer in self.layers.items()
            for bname, _ in layer.named_buffers(prefix=name, recurse=False)
        }

    def remove(self) -> None:
        """Stop forcing inference mode (the layers keep their current mode)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def freeze_parameter(parameter: torch.Tensor) -> None:
    """Stop training ``parameter``.

    The gradient is dropped too: optimizers skip parameters whose ``grad`` is ``None``, so a
    frozen parameter gets neither momentum nor weight-decay updates, even when it sits in the
    optimizer.
    """
    parameter.requires_grad_(False)
    parameter.grad = None

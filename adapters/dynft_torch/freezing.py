"""Freezing backbone parameters and keeping the backbone's BatchNorm layers in inference mode.

Why a forward pre-hook: ``model.train()`` (called by most loops and by Lightning every epoch)
recursively flips ``training`` on every submodule, and users also set ``bn.training`` directly.
Overriding ``train`` on instances misses the direct assignment and breaks pickling; a pre-hook
runs right before each BatchNorm forward, whatever flipped the flag, so the layer always
normalises with its running statistics and never updates them. It survives ``state_dict``
round trips, DDP wrapping (hooks live on the inner module) and ``copy.deepcopy``. The one visible
effect is that ``bn.training`` may read ``True`` between ``model.train()`` and the next forward.

With ``train_batchnorm=True`` a layer is released when its group is unfrozen: the hook goes, its
affine parameters train, and it normalises with batch statistics in training mode again.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from .group_specs import is_under
from .groups import BackboneGroup


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
        layers: Module name -> BatchNorm layer, from ``backbone_batchnorms``.
    """
    return {
        pname
        for name, layer in layers.items()
        for pname, _ in layer.named_parameters(prefix=name, recurse=False)
    }


def batchnorm_buffer_names(layers: dict[str, _BatchNorm]) -> set[str]:
    """Names, in the whole model, of the running statistics (and batch counters) of ``layers``."""
    return {
        bname
        for name, layer in layers.items()
        for bname, _ in layer.named_buffers(prefix=name, recurse=False)
    }


def _force_inference_mode(module: nn.Module, args: tuple[object, ...]) -> None:
    if module.training:
        module.training = False


class BatchNormFreezer:
    """Keeps BatchNorm layers in inference mode with frozen affine parameters.

    Running mean and variance are then never updated (paper, Eq. 11), whether or not the
    surrounding group has been unfrozen.

    Args:
        layers: Module name -> BatchNorm layer, from
            [`backbone_batchnorms`][dynft_torch.backbone_batchnorms].
    """

    def __init__(self, layers: dict[str, _BatchNorm]) -> None:
        self.layers = dict(layers)
        self._handles: dict[str, RemovableHandle] = {}
        for name, layer in layers.items():
            layer.eval()
            for parameter in layer.parameters(recurse=False):
                freeze_parameter(parameter)
            self._handles[name] = layer.register_forward_pre_hook(_force_inference_mode)

    def parameter_names(self) -> set[str]:
        """Names of the affine parameters of the frozen layers."""
        return batchnorm_parameter_names(self.layers)

    def buffer_names(self) -> set[str]:
        """Names of the running statistics (and batch counters) of the frozen layers."""
        return batchnorm_buffer_names(self.layers)

    def release(self, names: Iterable[str], training: bool) -> list[str]:
        """Let the named layers train again (``train_batchnorm=True`` at an unfreeze).

        Args:
            names: Module names of frozen layers to release (others are ignored).
            training: The mode to put them in now (the model's current mode).

        Returns:
            Names of the parameters and buffers of the released layers.
        """
        released: list[str] = []
        for name in [n for n in names if n in self.layers]:
            layer = self.layers.pop(name)
            self._handles.pop(name).remove()
            layer.train(training)
            released += [n for n, _ in layer.named_parameters(prefix=name, recurse=False)]
            released += [n for n, _ in layer.named_buffers(prefix=name, recurse=False)]
        return released

    def remove(self) -> None:
        """Stop forcing inference mode (the layers keep their current mode)."""
        for handle in self._handles.values():
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


def warn_zero_weight_batchnorms(layers: dict[str, _BatchNorm]) -> None:
    """Warn about frozen BatchNorm layers whose scale is all zero.

    Such a layer outputs its bias whatever its input (timm's ``zero_init_last`` puts one at the
    end of every residual branch; pretrained weights replace it). Kept frozen, it blocks the
    branch before it for the whole run: no gradient reaches that branch's weights.
    """
    zero = [
        name
        for name, layer in layers.items()
        if isinstance(layer.weight, torch.Tensor) and not bool(layer.weight.detach().any())
    ]
    if zero:
        warnings.warn(
            f"dynft: {len(zero)} frozen BatchNorm layer(s) have an all-zero weight "
            f"({', '.join(zero[:4])}{' ...' if len(zero) > 4 else ''}): they output a constant, "
            "so the layers before them get no gradient for the whole run (random init with "
            "zero_init_last?). Load pretrained weights, or pass train_batchnorm=True so they "
            "train once their group is unfrozen",
            UserWarning,
            stacklevel=3,
        )

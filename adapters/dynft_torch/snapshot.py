"""CPU copies of the best-validation state, keyed by parameter and buffer names.

Only what can change is copied: the trainable parameters and the buffers outside the frozen
BatchNorm layers. Groups unfrozen later are added to the copy at the moment they are unfrozen:
they were frozen since the copy was taken, so their current values are the values of the best
epoch, and a later rollback has to restore them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``tensor`` in CPU memory (always a copy, also for CPU tensors)."""
    return tensor.detach().to("cpu", copy=True)


class WeightSnapshot:
    """The best-validation values of the model's changeable tensors.

    Args:
        model: The network whose tensors are copied and restored in place.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.tensors: dict[str, torch.Tensor] = {}

    @property
    def empty(self) -> bool:
        """Whether nothing has been captured yet."""
        return not self.tensors

    @property
    def nbytes(self) -> int:
        """Bytes held by the copies."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def _named_tensors(self) -> dict[str, torch.Tensor]:
        named: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        named.update(self.model.named_buffers())
        return named

    def capture(self, names: Iterable[str]) -> None:
        """Replace the snapshot by copies of the named parameters and buffers.

        Args:
            names: Names from ``model.named_parameters()`` / ``model.named_buffers()``.
        """
        named = self._named_tensors()
        with torch.no_grad():
            self.tensors = {name: cpu_copy(named[name]) for name in names}

    def extend(self, names: Iterable[str]) -> None:
        """Add the current values of tensors unchanged since the last
        [`capture`][dynft_torch.WeightSnapshot.capture]."""
        if self.empty:
            return
        named = self._named_tensors()
        with torch.no_grad():
            for name in names:
                if name not in self.tensors:
                    self.tensors[name] = cpu_copy(named[name])

    def restore(self) -> None:
        """Copy the snapshot back into the model, in place (parameter identity is kept)."""
        named = self._named_tensors()
        with torch.no_grad():
            for name, saved in self.tensors.items():
                named[name].copy_(saved)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The copies by name (plain tensors; ``torch.load(weights_only=True)`` reads them)."""
        return dict(self.tensors)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore copies saved by [`state_dict`][dynft_torch.WeightSnapshot.state_dict].

        Raises:
            ValueError: A name is not a parameter or buffer of the model, or a shape differs.
        """
        named = self._named_tensors()
        for name, tensor in state.items():
            if name not in named:
                raise ValueError(
                    f"snapshot entry {name!r} is not a parameter or buffer of the model"
                )
            if tuple(tensor.shape) != tuple(named[name].shape):
                raise ValueError(
                    f"snapshot entry {name!r} has shape {tuple(tensor.shape)} but the model's "
                    f"tensor has shape {tuple(named[name].shape)}"
                )
        self.tensors = {name: cpu_copy(tensor) for name, tensor in state.items()}

"""The optimizer's per-parameter state: an optional rollback copy, and a reset after divergence.

Parameters are matched by identity (``id``), never by value: two layers may hold equal weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from .snapshot import cpu_copy


class OptimizerStateSnapshot:
    """CPU copy of the optimizer's per-parameter state (momenta, Adam moments, step counts).

    Keyed by parameter name; the learning rates and param groups are left alone, so a restore
    keeps the decayed learning rate.

    Args:
        optimizer: The optimizer whose state is copied.
        parameter_names: Parameter identity -> name in ``model.named_parameters()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, parameter_names: Mapping[int, str]):
        self.optimizer = optimizer
        self.parameter_names = parameter_names
        self.state: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, str]] = {}

    def capture(self) -> None:
        """Copy the current state of every parameter the optimizer holds."""
        self.state, self.devices = {}, {}
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                entries = self.optimizer.state.get(parameter)
                if not entries:
                    continue
                name = self.parameter_names[id(parameter)]
                self.state[name] = {
                    key: cpu_copy(value)
                    if isinstance(value, torch.Tensor)
                    else copy.deepcopy(value)
                    for key, value in entries.items()
                }
                self.devices[name] = {
                    key: str(value.device)
                    for key, value in entries.items()
                    if isinstance(value, torch.Tensor)
                }

    def restore(self) -> None:
        """Put the copied state back; parameters without a copy lose their state."""
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                name = self.parameter_names[id(parameter)]
                saved = self.state.get(name)
                if saved is None:
                    self.optimizer.state.pop(parameter, None)
                    continue
                devices = self.devices.get(name, {})
                self.optimizer.state[parameter] = {
                    key: value.to(devices[key], copy=True)
                    if isinstance(value, torch.Tensor)
                    else copy.deepcopy(value)
                    for key, value in saved.items()
                }

    def state_dict(self) -> dict[str, Any]:
        """Name-keyed copies and their devices (``torch.load(weights_only=True)`` reads it)."""
        return {"state": self.state, "devices": self.devices}

    def check_state_dict(self, state: object) -> None:
        """Raise ``ValueError`` naming the key unless ``state`` can be loaded."""
        if not isinstance(state, Mapping) or set(state) != {"state", "devices"}:
            raise ValueError("'optimizer_snapshot' must be a dict with 'state' and 'devices'")
        saved, devices = state["state"], state["devices"]
        if not isinstance(saved, Mapping) or not isinstance(devices, Mapping):
            raise ValueError("'optimizer_snapshot.state' and '.devices' must be dicts")
        known = set(self.parameter_names.values())
        for name, entries in saved.items():
            if name not in known:
                raise ValueError(f"'optimizer_snapshot.state' names unknown parameter {name!r}")
            if not isinstance(entries, Mapping):
                raise ValueError(f"'optimizer_snapshot.state.{name}' must be a dict")
            tensors = {k for k, v in entries.items() if isinstance(v, torch.Tensor)}
            placed = devices.get(name, {})
            if not isinstance(placed, Mapping) or set(placed) != tensors:
                raise ValueError(
                    f"'optimizer_snapshot.devices.{name}' must name the device of every tensor "
                    f"in its state, {sorted(tensors)}"
                )
        unknown = sorted(set(devices) - set(saved))
        if unknown:
            raise ValueError(f"'optimizer_snapshot.devices' has entries without state: {unknown}")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned.

        Raises:
            ValueError: See ``check_state_dict``; nothing is changed then.
        """
        self.check_state_dict(state)
        self.state = {name: dict(entries) for name, entries in state["state"].items()}
        self.devices = {name: dict(entries) for name, entries in state["devices"].items()}


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Drop every parameter's optimizer state (momenta, Adam moments, step counts).

    After a non-finite epoch the state holds NaN/inf, and every later step would spread it
    back into the restored weights; a fresh state is what a newly created optimizer has.
    """
    optimizer.state.clear()

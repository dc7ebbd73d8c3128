"""Optimizer bookkeeping: parameter membership, learning-rate decay, optional state rollback.

Parameters are matched by identity (``id``), never by value: two layers may hold equal weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .snapshot import cpu_copy

# Learning-rate keys that OneCycleLR keeps in each param group and recomputes ``lr`` from. Only
# scaled when that scheduler is given; ``initial_lr`` (set by every LRScheduler) is always scaled,
# because schedulers constructed after the decay start from it.
_SCHEDULER_GROUP_KEYS = ("max_lr", "min_lr")
# Per-group learning-rate lists kept on the scheduler object (LambdaLR, StepLR, CosineAnnealing...
# keep ``base_lrs``; CyclicLR keeps ``max_lrs``).
_SCHEDULER_LIST_ATTRIBUTES = ("base_lrs", "max_lrs")


def optimizer_parameter_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    """Identities of every parameter held by ``optimizer``.

    Raises:
        ValueError: A parameter appears in two param groups.
    """
    seen: set[int] = set()
    for index, group in enumerate(optimizer.param_groups):
        for parameter in group["params"]:
            if id(parameter) in seen:
                raise ValueError(
                    f"a parameter of shape {tuple(parameter.shape)} appears twice in the "
                    f"optimizer (again in param group {index}); each parameter may be in one "
                    "group only"
                )
            seen.add(id(parameter))
    return seen


def add_missing_parameters(
    optimizer: torch.optim.Optimizer, named_parameters: Sequence[tuple[str, torch.Tensor]]
) -> list[str]:
    """Put the parameters the optimizer does not hold yet into one new param group.

    The new group copies the hyper-parameters of the first param group (current ``lr``,
    ``initial_lr``, momentum, weight decay ...).

    Args:
        optimizer: The user's optimizer.
        named_parameters: ``(name, parameter)`` pairs that must be trained from now on.

    Returns:
        The names of the parameters added (empty when the optimizer already held them all).
    """
    held = optimizer_parameter_ids(optimizer)
    missing = [(name, p) for name, p in named_parameters if id(p) not in held]
    if not missing:
        return []
    template = {
        key: value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
        for key, value in optimizer.param_groups[0].items()
        if key != "params"
    }
    optimizer.add_param_group({**template, "params": [p for _, p in missing]})
    return [name for name, _ in missing]


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, torch.Tensor):
        return value.mul_(factor)
    return value * factor


def scale_learning_rates(
    optimizer: torch.optim.Optimizer, factor: float, lr_scheduler: object | None = None
) -> None:
    """Multiply the learning rate of every param group by ``factor``.

    ``initial_lr`` is scaled too, so schedulers constructed later start from the decayed
    rate. With ``lr_scheduler`` given, the rates it recomputes ``lr`` from (``base_lrs``,
    CyclicLR's ``max_lrs``, OneCycleLR's ``max_lr``/``min_lr``) are scaled as well, so the
    decay survives its next ``step()``.

    Args:
        optimizer: The optimizer whose param groups are scaled.
        factor: The multiplier (``Decision.lr_factor``).
        lr_scheduler: Optional learning-rate scheduler attached to ``optimizer``. Defaults to
            ``None``.
    """
    if factor == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] = _scaled(group["lr"], factor)
        if "initial_lr" in group:
            group["initial_lr"] = _scaled(group["initial_lr"], factor)
        if lr_scheduler is not None:
            for key in _SCHEDULER_GROUP_KEYS:
                if key in group:
                    group[key] = _scaled(group[key], factor)
    if lr_scheduler is not None:
        for attribute in _SCHEDULER_LIST_ATTRIBUTES:
            values = getattr(lr_scheduler, attribute, None)
            if isinstance(values, list):
                setattr(lr_scheduler, attribute, [_scaled(v, factor) for v in values])


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

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: A name is not a parameter held by the optimizer.
        """
        known = set(self.parameter_names.values())
        unknown = [name for name in state["state"] if name not in known]
        if unknown:
            raise ValueError(f"optimizer snapshot names unknown parameters: {unknown[:3]}")
        self.state = {name: dict(entries) for name, entries in state["state"].items()}
        self.devices = {name: dict(entries) for name, entries in state["devices"].items()}

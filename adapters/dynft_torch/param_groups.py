"""Where newly trainable parameters go in the user's optimizer, and the decay of every rate.

A parameter the optimizer already holds stays in its group (Algorithm 1: one rate for
everything), unless ``unfrozen_lr_ratio != 1``: then it moves to a new group at that ratio of
its group's rate. A parameter the optimizer lacks follows the user's weight-decay split, the
timm / Hugging Face convention: a 1-D tensor (bias, norm weight) takes the settings of the group
holding the user's 1-D parameters, any other tensor those of the group holding the others.
``param_group_fn(name, parameter)`` overrides settings per parameter. Each unfreeze adds one
param group per distinct set of settings; its schedule is registered with the LR schedulers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .lr_schedulers import check_lr_schedulers, register_param_group

# Group keys holding learning rates (OneCycleLR keeps ``max_lr``/``min_lr`` in the groups).
RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
_NOT_SETTINGS = ("params", "param_names")

ParamGroupFn = Callable[[str, nn.Parameter], "Mapping[str, Any] | None"]


def check_param_group_fn(param_group_fn: object) -> ParamGroupFn | None:
    """``param_group_fn`` itself, refused unless it is callable or ``None``.

    Raises:
        TypeError: It is neither.
    """
    if param_group_fn is not None and not callable(param_group_fn):
        raise TypeError(
            f"param_group_fn must be callable (name, parameter) -> dict | None, or None; got "
            f"{type(param_group_fn).__name__}: {param_group_fn!r}"
        )
    return param_group_fn


def kind_of(parameter: torch.Tensor) -> str:
    """``"1-D"`` (biases, norm weights: no weight decay by convention) or ``"n-D"``."""
    return "1-D" if parameter.ndim <= 1 else "n-D"


def _copy_value(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def scale_group_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every rate held in the param groups (``lr``, ``initial_lr``...) by ``factor``."""
    for group in optimizer.param_groups:
        for key in RATE_KEYS:
            if key in group:
                value = group[key]
                group[key] = (
                    value.mul_(factor) if isinstance(value, torch.Tensor) else value * factor
                )


def held_groups(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """Parameter identity -> index of the param group holding it.

    Raises:
        ValueError: A parameter appears in two param groups (or twice in one).
    """
    held: dict[int, int] = {}
    for index, group in enumerate(optimizer.param_groups):
        for parameter in group["params"]:
            if id(parameter) in held:
                raise ValueError(
                    f"a parameter of shape {tuple(parameter.shape)} appears twice in the "
                    f"optimizer (again in param group {index}); each parameter may be in one "
                    "group only"
                )
            held[id(parameter)] = index
    return held


def check_optimizer(
    optimizer: torch.optim.Optimizer,
    parameters: Mapping[str, nn.Parameter],
    trainable: Sequence[str],
    lr_schedulers: Sequence[object],
    lr_ratio: float,
) -> None:
    """Refuse an optimizer (and schedulers) the tuner cannot work with; changes nothing.

    Args:
        optimizer: The user's optimizer.
        parameters: The model's parameters by name.
        trainable: Names of the parameters that train now.
        lr_schedulers: The schedulers passed with it.
        lr_ratio: ``unfrozen_lr_ratio``.

    Raises:
        ValueError: A parameter held twice, a tensor that is not a parameter of the model, no
            trainable parameter held, or a scheduler refused by ``check_lr_schedulers``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    held = held_groups(optimizer)
    foreign = set(held) - {id(p) for p in parameters.values()}
    if foreign:
        raise ValueError(
            f"the optimizer holds {len(foreign)} tensors that are not parameters of the "
            "model; build it from model.parameters()"
        )
    if not any(id(parameters[name]) in held for name in trainable):
        raise ValueError(
            f"the optimizer holds none of the {len(trainable)} trainable parameters "
            f"({', '.join(trainable[:3])}{' ...' if len(trainable) > 3 else ''}): it would "
            "train nothing; build it from model.parameters() or the head's parameters"
        )
    check_lr_schedulers(lr_schedulers, optimizer, lr_ratio)


@dataclass(frozen=True)
class Placement:
    """One param group added by the tuner: its parameters, the user group it copies, overrides."""

    parameters: tuple[str, ...]
    template: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameters": list(self.parameters),
            "template": self.template,
            "settings": dict(self.settings),
        }


class ParamGroupPlacer:
    """Adds newly trainable parameters to the optimizer as described in the module docstring.

    Args:
        optimizer: The user's optimizer; its groups at this moment are the templates.
        parameters: The model's parameters by name.
        param_group_fn: ``(name, parameter) -> dict | None``, settings overriding the template's
            for that parameter (any hyper-parameter of the optimizer except the rates).
        lr_schedulers: The schedulers a new group is registered with.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Mapping[str, nn.Parameter],
        param_group_fn: ParamGroupFn | None,
        lr_schedulers: Sequence[object],
    ) -> None:
        self.optimizer = optimizer
        self.parameters = parameters
        self.param_group_fn = param_group_fn
        self.lr_schedulers = lr_schedulers
        self.user_groups = len(optimizer.param_groups)
        # The kinds each user group holds, fixed now: a parameter moved out later (with
        # unfrozen_lr_ratio != 1) must not change which group later parameters follow.
        self._kinds = [{kind_of(p) for p in group["params"]} for group in optimizer.param_groups]
        self.placements: list[Placement] = []

    def template_for(self, name: str, parameter: nn.Parameter) -> int:
        """Index of the user's param group whose settings ``parameter`` follows.

        Raises:
            ValueError: No group holds a parameter of its kind and the groups differ.
        """
        wanted = kind_of(parameter)
        kinds = self._kinds
        for accept in (lambda k: k == {wanted}, lambda k: wanted in k):
            for index, held in enumerate(kinds):
                if accept(held):
                    return index
        filled = [index for index, held in enumerate(kinds) if held]
        if len(filled) == 1:
            return filled[0]
        raise ValueError(
            f"no param group of the optimizer holds a {wanted} parameter like {name!r} "
            f"(shape {tuple(parameter.shape)}), so dynft cannot tell which of its "
            f"{len(filled)} groups' settings it should follow; pass param_group_fn="
            "lambda name, p: {'weight_decay': ...} to say"
        )

    def _overrides(self, name: str, parameter: nn.Parameter, template: int) -> dict[str, Any]:
        if self.param_group_fn is None:
            return {}
        settings = self.param_group_fn(name, parameter)
        if settings is None:
            return {}
        if not isinstance(settings, Mapping):
            raise TypeError(
                f"param_group_fn({name!r}, ...) must return a dict of group settings or None, "
                f"got {type(settings).__name__}"
            )
        allowed = sorted(
            k
            for k in self.optimizer.param_groups[template]
            if k not in _NOT_SETTINGS and k not in RATE_KEYS
        )
        for key in settings:
            if key in RATE_KEYS:
                raise ValueError(
                    f"param_group_fn({name!r}, ...) returned {key!r}: the rates of unfrozen "
                    "parameters follow the head's (unfrozen_lr_ratio sets their ratio)"
                )
            if key not in allowed:
                raise ValueError(
                    f"param_group_fn({name!r}, ...) returned unknown setting {key!r}; the "
                    f"optimizer's settings are {allowed}"
                )
        return dict(settings)

    def plan(self, named: Sequence[tuple[str, nn.Parameter]], lr_ratio: float) -> list[Placement]:
        """The new param groups that make the optimizer train ``named``; changes nothing.

        Raises:
            ValueError / TypeError: A parameter has no group to follow, or ``param_group_fn``
                returned something unusable.
        """
        held = held_groups(self.optimizer)
        buckets: dict[tuple[int, str], Placement] = {}
        for name, parameter in named:
            index = held.get(id(parameter))
            if index is not None and lr_ratio == 1.0:
                continue
            template = index if index is not None else self.template_for(name, parameter)
            settings = self._overrides(name, parameter, template)
            key = (template, repr(sorted(settings.items())))
            if key in buckets:
                previous = buckets[key]
                buckets[key] = Placement((*previous.parameters, name), template, settings)
            else:
                buckets[key] = Placement((name,), template, settings)
        return list(buckets.values())

    def add_all(self, placements: Sequence[Placement], lr_ratio: float) -> None:
        """Carry out ``plan``'s placements (or saved ones, on resume), in order."""
        for placement in placements:
            self._add(placement, lr_ratio)

    def _add(self, placement: Placement, lr_ratio: float) -> None:
        template = self.optimizer.param_groups[placement.template]
        settings = {k: _copy_value(v) for k, v in template.items() if k not in _NOT_SETTINGS}
        settings.update(placement.settings)
        for key in RATE_KEYS:
            if key in settings:
                settings[key] = settings[key] * lr_ratio
        moved = {id(self.parameters[name]) for name in placement.parameters}
        for group in self.optimizer.param_groups:
            keep = [i for i, p in enumerate(group["params"]) if id(p) not in moved]
            if len(keep) != len(group["params"]):
                if "param_names" in group:
                    group["param_names"] = [group["param_names"][i] for i in keep]
                group["params"] = [group["params"][i] for i in keep]
        if "param_names" in template:
            settings["param_names"] = list(placement.parameters)
        params = [self.parameters[name] for name in placement.parameters]
        self.optimizer.add_param_group({**settings, "params": params})
        register_param_group(self.lr_schedulers, placement.template, lr_ratio)
        self.placements.append(placement)

    def predicted_group_sizes(self, placements: Sequence[Placement]) -> list[int]:
        """Parameters per param group after ``_add`` of each of ``placements``."""
        held = held_groups(self.optimizer)
        sizes = [len(group["params"]) for group in self.optimizer.param_groups]
        for placement in placements:
            for name in placement.parameters:
                index = held.get(id(self.parameters[name]))
                if index is not None:
                    sizes[index] -= 1
                held[id(self.parameters[name])] = len(sizes)
            sizes.append(len(placement.parameters))
        return sizes

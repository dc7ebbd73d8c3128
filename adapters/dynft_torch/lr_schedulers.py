"""Keeping the user's learning-rate schedulers on schedule through unfreezes and decays.

A scheduler keeps rates of its own besides the optimizer's ``lr``: closed-form schedulers
recompute ``lr`` from ``base_lrs`` (``LambdaLR``, ``CosineAnnealingLR`` at its restarts,
``SequentialLR`` at a milestone), ``CyclicLR`` from ``base_lrs``/``max_lrs``, the cosine
schedules clamp at ``eta_min``, ``ReduceLROnPlateau`` at ``min_lrs``. A decay that scales only
``lr`` is undone at the next ``step()``. So every such rate is multiplied too, and a param group
added by an unfreeze gets an entry in every per-group list (``lr_lambdas``, ``base_lrs``,
``min_lrs``...) copied from the group whose settings it follows, so it stays on the same
schedule. ``SequentialLR`` and ``ChainedScheduler`` hold schedulers inside: those are walked.

Only the classes of ``torch.optim.lr_scheduler`` whose state is known are accepted; a subclass
that keeps its per-group state in the same attributes can be admitted with
``register_lr_scheduler``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim import lr_scheduler as schedulers

SUPPORTED_LR_SCHEDULERS: tuple[type, ...] = (
    schedulers.LambdaLR,
    schedulers.MultiplicativeLR,
    schedulers.StepLR,
    schedulers.MultiStepLR,
    schedulers.ConstantLR,
    schedulers.LinearLR,
    schedulers.ExponentialLR,
    schedulers.PolynomialLR,
    schedulers.CosineAnnealingLR,
    schedulers.CosineAnnealingWarmRestarts,
    schedulers.CyclicLR,
    schedulers.OneCycleLR,
    schedulers.ReduceLROnPlateau,
    schedulers.SequentialLR,
    schedulers.ChainedScheduler,
)
_registered: set[type] = set()

# Per-group lists of rates: multiplied by the decay, and by the ratio for a new group.
_RATE_LISTS = ("base_lrs", "min_lrs", "max_lrs")
# Per-group lists of other settings: a new group copies its template's entry.
_SETTING_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")
# One rate shared by every group (the cosine schedules' floor; ReduceLROnPlateau's default).
_SHARED_RATES = ("eta_min", "default_min_lr")


def register_lr_scheduler(cls: type) -> type:
    """Admit a user subclass of a torch LR scheduler (usable as a class decorator).

    dynft then treats it like the torch classes: it scales ``lr``, ``initial_lr`` and the
    per-group lists ``base_lrs``/``min_lrs``/``max_lrs`` and the shared ``eta_min``, and
    extends ``lr_lambdas``/``base_momentums``/``max_momentums`` for new param groups. Register
    only a scheduler that keeps all of its per-group state there (or in the param groups).

    Raises:
        TypeError: ``cls`` is not a subclass of ``torch.optim.lr_scheduler.LRScheduler``.
    """
    if not (isinstance(cls, type) and issubclass(cls, schedulers.LRScheduler)):
        raise TypeError(f"register_lr_scheduler needs an LRScheduler subclass, got {cls!r}")
    _registered.add(cls)
    return cls


def _children(scheduler: object) -> list[Any]:
    held = getattr(scheduler, "_schedulers", None)
    return list(held) if isinstance(held, (list, tuple)) else []


def flatten(lr_schedulers: Iterable[object]) -> list[Any]:
    """Every scheduler given and every one held inside ``SequentialLR``/``ChainedScheduler``."""
    nodes: list[Any] = []
    for scheduler in lr_schedulers:
        nodes.append(scheduler)
        nodes.extend(flatten(_children(scheduler)))
    return nodes


def as_scheduler_list(lr_scheduler: object | Sequence[object] | None) -> tuple[Any, ...]:
    """``lr_scheduler=`` as a tuple: ``None`` -> ``()``, one scheduler -> ``(it,)``."""
    if lr_scheduler is None:
        return ()
    if isinstance(lr_scheduler, (list, tuple)):
        return tuple(lr_scheduler)
    return (lr_scheduler,)


def check_lr_schedulers(
    lr_schedulers: Sequence[object], optimizer: torch.optim.Optimizer, lr_ratio: float
) -> None:
    """Refuse schedulers dynft cannot keep on schedule, before anything is changed.

    Raises:
        ValueError: A scheduler of an unknown class, one attached to another optimizer, a
            cosine schedule with ``eta_min > 0`` together with ``unfrozen_lr_ratio != 1`` (it
            has one floor for all groups, so new groups cannot follow it at another rate), or
            a scheduler attached to ``optimizer`` but not passed.
    """
    for scheduler in flatten(lr_schedulers):
        kind = type(scheduler)
        if kind not in SUPPORTED_LR_SCHEDULERS and kind not in _registered:
            names = ", ".join(c.__name__ for c in SUPPORTED_LR_SCHEDULERS)
            remedy = (
                "A subclass that keeps its per-group state in base_lrs/min_lrs/max_lrs/"
                "lr_lambdas can be admitted with "
                f"dynft_torch.register_lr_scheduler({kind.__name__})"
                if isinstance(scheduler, schedulers.LRScheduler)
                else f"Pass scheduler objects built on the optimizer, not a {kind.__name__}"
            )
            raise ValueError(
                f"lr_scheduler {kind.__name__} is not one dynft knows how to keep on schedule "
                f"through unfreezes; supported: {names}. {remedy}"
            )
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError(
                f"lr_scheduler {kind.__name__} is attached to another optimizer than the "
                "tuner's; build it on the optimizer passed to the tuner"
            )
        eta_min = getattr(scheduler, "eta_min", 0.0)
        if lr_ratio != 1.0 and eta_min != 0:
            raise ValueError(
                f"{kind.__name__}(eta_min={eta_min}) has one floor for every param group, so "
                f"groups unfrozen at unfrozen_lr_ratio={lr_ratio} cannot follow it at their "
                "own rate; use eta_min=0 or unfrozen_lr_ratio=1.0"
            )
    if not lr_schedulers and is_scheduled(optimizer):
        raise ValueError(
            "a learning-rate scheduler is attached to this optimizer but was not passed: pass "
            "it as lr_scheduler= (a list for several) so that the unfreeze decay and the new "
            "param groups follow it; otherwise its next step() undoes the decay"
        )


def is_scheduled(optimizer: torch.optim.Optimizer) -> bool:
    """Whether an ``LRScheduler`` was built on ``optimizer`` (torch marks its ``step``)."""
    return hasattr(optimizer.step, "_wrapped_by_lr_sched")


def _times(value: Any, factor: float) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone().mul_(factor)
    return value * factor


def scale_scheduler_rates(lr_schedulers: Sequence[object], factor: float) -> None:
    """Multiply every rate the schedulers keep by ``factor``."""
    for scheduler in flatten(lr_schedulers):
        for attribute in _RATE_LISTS:
            values = getattr(scheduler, attribute, None)
            if isinstance(values, list):
                setattr(scheduler, attribute, [_times(v, factor) for v in values])
        for attribute in _SHARED_RATES:
            value = getattr(scheduler, attribute, None)
            if value is not None and not isinstance(value, bool):
                setattr(scheduler, attribute, _times(value, factor))


def register_param_group(lr_schedulers: Sequence[object], template: int, lr_ratio: float) -> None:
    """Give a param group just appended to the optimizer the schedule of group ``template``.

    Its rates are ``lr_ratio`` times the template's; its lambdas and momenta are the same.
    """
    for scheduler in flatten(lr_schedulers):
        for attribute in _RATE_LISTS:
            values = getattr(scheduler, attribute, None)
            if isinstance(values, list):
                values.append(_times(values[template], lr_ratio))
        for attribute in _SETTING_LISTS:
            values = getattr(scheduler, attribute, None)
            if isinstance(values, list):
                values.append(values[template])


def refresh_last_lr(lr_schedulers: Sequence[object], optimizer: torch.optim.Optimizer) -> None:
    """Make ``get_last_lr()`` report the rates dynft just set (one entry per param group)."""
    rates = [group["lr"] for group in optimizer.param_groups]
    for scheduler in flatten(lr_schedulers):
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [_times(rate, 1.0) for rate in rates]

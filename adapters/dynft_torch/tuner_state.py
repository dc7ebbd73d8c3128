"""The tuner's saved state, and checking one completely before any of it is used.

A resume that loads half a state (the scheduler but not the param groups, a snapshot missing a
trained group) would continue without a word and end on wrong weights. So every field is checked
against the tuner, the model, the optimizer and the other fields first; only a state that passes
is applied, and one that fails leaves the tuner, the model and the optimizer as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dynft_core.state_check import check_envelope

from .freezing import backbone_batchnorms, batchnorm_buffer_names
from .param_groups import RATE_KEYS, Placement, held_groups

if TYPE_CHECKING:
    from .tuner import DynamicFineTuner

STATE_FORMAT = "dynft_torch.DynamicFineTuner"
STATE_VERSION = 2
_KEYS = (
    "format",
    "version",
    "options",
    "scheduler",
    "group_parameter_names",
    "placements",
    "snapshot",
    "optimizer_snapshot",
)


def _options(tuner: DynamicFineTuner) -> dict[str, Any]:
    return {
        "unfrozen_lr_ratio": tuner.config.unfrozen_lr_ratio,
        "train_batchnorm": tuner.config.train_batchnorm,
        "restore_optimizer": tuner.restore_optimizer,
    }


def tuner_state(tuner: DynamicFineTuner) -> dict[str, Any]:
    """``DynamicFineTuner.state_dict()``."""
    optimizer_snapshot = tuner._optimizer_snapshot
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "options": _options(tuner),
        "scheduler": tuner.scheduler.state_dict(),
        "group_parameter_names": [list(g.parameter_names) for g in tuner.groups],
        "placements": [p.to_dict() for p in tuner._placer.placements],
        "snapshot": tuner.snapshot.state_dict(),
        "optimizer_snapshot": None
        if optimizer_snapshot is None
        else optimizer_snapshot.state_dict(),
    }


@dataclass(frozen=True)
class LoadPlan:
    """A checked state, ready to be applied; ``param_group_sizes`` is the optimizer's layout
    after the placements (what a saved optimizer state must match)."""

    scheduler_state: Mapping[str, Any]
    placements: list[Placement]
    snapshot: Mapping[str, torch.Tensor]
    optimizer_snapshot: Mapping[str, Any] | None
    epoch: int
    param_group_sizes: list[int]


def _fail(key: str, problem: str) -> ValueError:
    return ValueError(f"invalid tuner state: {key!r} {problem}")


def _placements(tuner: DynamicFineTuner, saved: object, unfrozen: list[str]) -> list[Placement]:
    if not isinstance(saved, list):
        raise _fail("placements", f"must be a list, got {type(saved).__name__}")
    placer = tuner._placer
    seen: set[str] = set()
    result = []
    for position, entry in enumerate(saved):
        key = f"placements[{position}]"
        if not isinstance(entry, Mapping) or set(entry) != {"parameters", "template", "settings"}:
            raise _fail(key, "must be a dict with parameters, template and settings")
        names, template, settings = entry["parameters"], entry["template"], entry["settings"]
        if not isinstance(names, list) or not names or not all(n in unfrozen for n in names):
            raise _fail(f"{key}.parameters", "must list parameters of the unfrozen groups")
        if seen.intersection(names) or len(set(names)) != len(names):
            raise _fail(f"{key}.parameters", "places a parameter twice")
        seen.update(names)
        if not isinstance(template, int) or not 0 <= template < placer.user_groups:
            raise _fail(f"{key}.template", f"must be a param group index < {placer.user_groups}")
        allowed = set(tuner.optimizer.param_groups[template]) - set(RATE_KEYS) - {"params"}
        if not isinstance(settings, Mapping) or not set(settings) <= allowed:
            raise _fail(f"{key}.settings", f"must be a dict of settings among {sorted(allowed)}")
        result.append(Placement(tuple(names), template, dict(settings)))
    held = held_groups(tuner.optimizer)
    missing = [n for n in unfrozen if id(tuner._parameters[n]) not in held and n not in seen]
    if missing:
        raise _fail(
            "placements",
            f"does not place {missing[:3]}, unfrozen by the run but not held by this optimizer: "
            "build the optimizer like the saved run's",
        )
    return result


def _snapshot(tuner: DynamicFineTuner, saved: object, expected: set[str], has_best: bool) -> None:
    if not isinstance(saved, Mapping):
        raise _fail("snapshot", f"must be a dict of tensors, got {type(saved).__name__}")
    named = dict(tuner.model.named_parameters())
    named.update(tuner.model.named_buffers())
    for name, tensor in saved.items():
        if name not in named or not isinstance(tensor, torch.Tensor):
            raise _fail(f"snapshot.{name}", "is not a tensor of a parameter or buffer of the model")
        if tuple(tensor.shape) != tuple(named[name].shape):
            raise _fail(
                f"snapshot.{name}",
                f"has shape {tuple(tensor.shape)}, the model's {tuple(named[name].shape)}",
            )
    if not has_best and saved:
        raise _fail("snapshot", "holds tensors but the scheduler has no best epoch")
    if has_best and set(saved) != expected:
        absent = sorted(expected - set(saved))[:3]
        extra = sorted(set(saved) - expected)[:3]
        raise _fail(
            "snapshot",
            f"does not hold what the run trained (missing {absent}, not trained {extra})",
        )


def load_plan(tuner: DynamicFineTuner, state: object) -> LoadPlan:
    """Check ``state`` against ``tuner`` and return what applying it takes.

    Raises:
        ValueError: The first problem found, naming the key.
    """
    state = check_envelope(state, "tuner", _KEYS, STATE_VERSION, STATE_FORMAT)
    scheduler = tuner.scheduler
    if scheduler.epoch or scheduler.stopped or tuner._placer.placements:
        raise ValueError(
            "load_state_dict needs a freshly built tuner; this one has already stepped "
            f"{scheduler.epoch} epochs"
        )
    saved_options = state["options"] if isinstance(state["options"], Mapping) else {}
    for key, value in _options(tuner).items():
        theirs = saved_options.get(key)
        if theirs != value or type(theirs) is not type(value):
            raise ValueError(
                f"the state was saved with {key}={theirs!r} but this tuner has {key}={value!r}; "
                "build the tuner with the saved options"
            )
    saved_groups = state["group_parameter_names"]
    mine = [list(g.parameter_names) for g in tuner.groups]
    if saved_groups != mine:
        count = len(saved_groups) if isinstance(saved_groups, list) else "?"
        raise ValueError(
            f"the state was saved with {count} groups that differ from this tuner's "
            f"{len(mine)} groups; build the tuner with the same model, backbone and groups"
        )
    probe = tuner.config.scheduler(len(tuner.groups), scheduler.max_epochs)
    try:
        probe.load_state_dict(state["scheduler"])
    except ValueError as err:
        raise _fail("scheduler", f"is invalid: {err}") from None

    unfrozen = [
        n for i in probe.trainable_groups for n in tuner.trainable_parameter_names(tuner.groups[i])
    ]
    placements = _placements(tuner, state["placements"], unfrozen)
    trainable = {n for n, p in tuner._parameters.items() if p.requires_grad} | set(unfrozen)
    still_frozen = [g for g in tuner.groups if g.index not in probe.trainable_groups]
    frozen_layers = (
        backbone_batchnorms(tuner.model, still_frozen)
        if tuner.config.train_batchnorm
        else tuner.batchnorm.layers
    )
    frozen_buffers = batchnorm_buffer_names(frozen_layers)
    changeable = trainable | {n for n, _ in tuner.model.named_buffers() if n not in frozen_buffers}
    _snapshot(tuner, state["snapshot"], changeable, probe.best_epoch is not None)
    optimizer_snapshot = state["optimizer_snapshot"]
    if tuner._optimizer_snapshot is not None:
        try:
            tuner._optimizer_snapshot.check_state_dict(optimizer_snapshot)
        except ValueError as err:
            raise _fail("optimizer_snapshot", f"is invalid: {err}") from None
    elif optimizer_snapshot is not None:
        raise _fail("optimizer_snapshot", "must be null for a tuner without restore_optimizer")
    return LoadPlan(
        scheduler_state=state["scheduler"],
        placements=placements,
        snapshot=state["snapshot"],
        optimizer_snapshot=optimizer_snapshot,
        epoch=probe.epoch,
        param_group_sizes=tuner._placer.predicted_group_sizes(placements),
    )

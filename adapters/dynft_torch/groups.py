"""Splitting a backbone into the ordered layer groups that the scheduler unfreezes.

A group is a set of parameters addressed by their names in ``model.named_parameters()``,
together with the module names that own them (used to find the BatchNorm layers to freeze).
Group 0 is next to the input, the last group next to the head.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from .auto_groups import auto_group_module_names, layer_parameter_groups
from .group_specs import (
    GroupSpec,
    explicit_groups,
    is_under,
    module_name_of,
    parameters_under,
    similar_names,
)
from .transformer_groups import pretrained_model_groups

GROUP_MODES = ("auto", "layers", "modules")


@dataclass(frozen=True)
class BackboneGroup:
    """One unfreezable unit of the backbone.

    Attributes:
        index: Position in the ordering (0 = shallowest).
        name: A readable label, e.g. ``"features.3"`` or ``"layer2.1"``.
        module_names: Names (in ``model.named_modules()``) of the modules forming the group.
        parameter_names: Names (in ``model.named_parameters()``) of every parameter in it.
    """

    index: int
    name: str
    module_names: tuple[str, ...]
    parameter_names: tuple[str, ...]


def check_group_arguments(backbone: object, groups: object) -> None:
    """Refuse a ``backbone`` or ``groups`` of the wrong kind, before any model is at hand.

    Raises:
        TypeError: ``backbone`` is neither ``None``, a module nor a module name.
        ValueError: ``groups`` is neither one of ``"auto"``, ``"layers"``, ``"modules"`` nor a
            non-empty list.
    """
    if backbone is not None and not isinstance(backbone, (str, nn.Module)):
        raise TypeError(
            "backbone must be None, a submodule of the model or its name, got "
            f"{type(backbone).__name__}: {backbone!r}"
        )
    if isinstance(groups, str):
        if groups not in GROUP_MODES:
            raise ValueError(
                f"groups must be one of {GROUP_MODES} or a list of modules, parameters, names "
                f"or patterns, got {groups!r}"
            )
    elif not isinstance(groups, Sequence) or not groups:
        raise ValueError(f"groups must be one of {GROUP_MODES} or a non-empty list, got {groups!r}")


def resolve_groups(
    model: nn.Module,
    backbone: nn.Module | str | None = None,
    groups: str | Sequence[GroupSpec] = "auto",
) -> list[BackboneGroup]:
    """Split the backbone of ``model`` into ordered groups.

    Args:
        model: The whole network.
        backbone: The pretrained part to freeze: a submodule of ``model`` or its name.
            Defaults to ``None``, the whole model. With ``"auto"``/``"modules"`` a recognised
            head inside it (children named ``fc``, ``classifier``, ``head``, ``AuxLogits``,
            ``_fc`` ..., timm's ``get_classifier()``, a Hugging Face model's task head)
            stays outside the groups; explicit groups must cover every parameter of a
            backbone submodule.
        groups: ``"auto"`` (default: architecture-aware blocks, see ``auto_groups`` and
            ``transformer_groups``), ``"layers"`` (the paper's unit: one group per module
            owning weights, BatchNorm excluded, each BatchNorm riding with the layer before it),
            ``"modules"`` (one group per leaf module owning parameters, BatchNorm included), or
            an explicit list ordered from input to head; each entry is a module, a container of
            model modules (an ``nn.Sequential`` slice such as ``model.features[0:3]``), a
            parameter, a module or parameter name, a parameter-name glob pattern
            (``"layer4.*"``), or a list of those.

    Returns:
        The groups, shallowest first. Every group owns at least one parameter and no
        parameter is in two groups.

    Raises:
        ValueError: Unknown names, a backbone outside the model, empty or overlapping groups,
            groups outside the backbone, or backbone parameters left in no group.
    """
    check_group_arguments(backbone, groups)
    if backbone is None:
        root_name = ""
    elif isinstance(backbone, str):
        modules = [name for name, _ in model.named_modules()]
        if backbone not in modules:
            raise ValueError(
                f"unknown backbone module name {backbone!r}: it is not in "
                f"model.named_modules(){similar_names(modules, backbone)}"
            )
        root_name = backbone
    else:
        root_name = module_name_of(model, backbone)
    explicit = not isinstance(groups, str)
    root = model.get_submodule(root_name)

    parameter_groups: list[tuple[tuple[str, ...], list[str]]] = []
    if isinstance(groups, str):
        # Hugging Face and timm models have their own rules (transformer_groups).
        library_groups = pretrained_model_groups(root, root_name) if groups == "auto" else None
        if groups == "layers":
            parameter_groups = layer_parameter_groups(root, root_name)
        elif library_groups is not None:
            parameter_groups = library_groups
        else:
            module_groups = auto_group_module_names(root, root_name, per_leaf=groups == "modules")
            parameter_groups = [(names, parameters_under(model, names)) for names in module_groups]
    else:
        for names, parameter_names in explicit_groups(model, groups):
            outside = [n for n in parameter_names if not is_under(n, root_name)]
            if outside:
                raise ValueError(
                    f"group parameters {outside[:3]} are outside the backbone {root_name!r}"
                )
            parameter_groups.append((names, parameter_names))

    result = _validated(parameter_groups)
    if explicit and root_name:
        grouped = {name for group in result for name in group.parameter_names}
        ungrouped = [n for n in parameters_under(model, [root_name]) if n not in grouped]
        if ungrouped:
            raise ValueError(
                f"{len(ungrouped)} backbone parameters are in no group (first: {ungrouped[:3]}); "
                "add their modules to a group or choose a smaller backbone"
            )
    return result


def _label(module_names: Sequence[str]) -> str:
    if len(module_names) <= 2:
        return "+".join(module_names)
    split = [name.split(".") for name in module_names]
    common = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common) if common else f"{module_names[0]}+{len(module_names) - 1} more"


def _validated(parameter_groups: list[tuple[tuple[str, ...], list[str]]]) -> list[BackboneGroup]:
    if not parameter_groups:
        raise ValueError("no backbone group was found; pass groups= explicitly")
    owner: dict[str, int] = {}
    result = []
    for index, (module_names, parameter_names) in enumerate(parameter_groups):
        label = _label(module_names)
        if not parameter_names:
            raise ValueError(f"group {index} ({label!r}) owns no parameters")
        for name in parameter_names:
            if name in owner:
                raise ValueError(
                    f"parameter {name!r} is in group {owner[name]} and group {index}; "
                    "groups must not overlap"
                )
            owner[name] = index
        result.append(BackboneGroup(index, label, module_names, tuple(parameter_names)))
    return result


def group_table(
    groups: Sequence[BackboneGroup],
    parameters: Mapping[str, nn.Parameter],
    trainable_groups: Collection[int],
    frozen_batchnorm: Collection[str],
) -> str:
    """The groups as a text table: index, name, parameter count, trainable or frozen.

    Args:
        groups: The backbone groups.
        parameters: The model's parameters by name.
        trainable_groups: Indices of the unfrozen groups.
        frozen_batchnorm: Names of the BatchNorm parameters that stay frozen.
    """
    grouped = {name for group in groups for name in group.parameter_names}
    rows = [("group", "name", "parameters", "state")]
    for group in groups:
        count = sum(parameters[n].numel() for n in group.parameter_names)
        state = "trainable" if group.index in trainable_groups else "frozen"
        held = sum(parameters[n].numel() for n in group.parameter_names if n in frozen_batchnorm)
        if state == "trainable" and held:
            state += f" ({held} BatchNorm parameters frozen)"
        rows.append((str(group.index), group.name, str(count), state))
    head = [p for n, p in parameters.items() if n not in grouped]
    head_state = "trainable" if any(p.requires_grad for p in head) else "frozen"
    rows.append(("head", "(outside the groups)", str(sum(p.numel() for p in head)), head_state))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()
        for row in rows
    )

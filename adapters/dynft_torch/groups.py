"""Splitting a backbone into the ordered layer groups that the scheduler unfreezes.

A group is a set of parameters addressed by their names in ``model.named_parameters()``,
together with the module names that own them (used to find the BatchNorm layers to freeze).
Group 0 is next to the input, the last group next to the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .auto_groups import auto_group_module_names
from .transformer_groups import pretrained_model_groups

GroupSpec = str | nn.Module | Sequence[str | nn.Module]
GROUP_MODES = ("auto", "modules")


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


def module_name_of(model: nn.Module, module: nn.Module) -> str:
    """Return the name of ``module`` inside ``model`` (``""`` for the model itself).

    Raises:
        ValueError: ``module`` is not a submodule of ``model``.
    """
    for name, candidate in model.named_modules(remove_duplicate=False):
        if candidate is module:
            return str(name)
    raise ValueError(
        f"backbone/group module {type(module).__name__} is not a submodule of the model "
        f"{type(model).__name__}; pass a module reachable from model.named_modules()"
    )


def is_under(name: str, prefix: str) -> bool:
    """Whether the dotted ``name`` is ``prefix`` itself or inside it (``""`` contains all)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _parameters_under(model: nn.Module, module_names: Sequence[str]) -> list[str]:
    return [
        name
        for name, _ in model.named_parameters()
        if any(is_under(name, prefix) for prefix in module_names)
    ]


def _resolve_module_name(model: nn.Module, item: str | nn.Module) -> str:
    if isinstance(item, nn.Module):
        return module_name_of(model, item)
    if not isinstance(item, str):
        raise TypeError(
            f"a group must be a module, a module name or a list of those, got "
            f"{type(item).__name__}: {item!r}"
        )
    known = dict(model.named_modules())
    if item not in known:
        close = [name for name in known if name and (item in name or name in item)][:5]
        hint = f"; similar names: {close}" if close else ""
        raise ValueError(
            f"unknown module name {item!r} in groups: it is not in model.named_modules(){hint}"
        )
    return item


def _explicit_groups(model: nn.Module, specs: Sequence[GroupSpec]) -> list[tuple[str, ...]]:
    resolved: list[tuple[str, ...]] = []
    for spec in specs:
        if isinstance(spec, (str, nn.Module)):
            items: list[str | nn.Module] = [spec]
        elif isinstance(spec, Sequence):
            items = list(spec)
        else:
            raise TypeError(
                f"group {len(resolved)} must be a module, a module name or a list of those, "
                f"got {type(spec).__name__}: {spec!r}"
            )
        if not items:
            raise ValueError(
                f"group {len(resolved)} is empty; every group needs at least one module"
            )
        resolved.append(tuple(_resolve_module_name(model, item) for item in items))
    return resolved


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
            ``transformer_groups``),
            ``"modules"`` (one group per leaf module owning parameters, the paper's "layers"),
            or an explicit list ordered from input to head whose items are modules, module
            names, or lists of those.

    Returns:
        The groups, shallowest first. Every group owns at least one parameter and no
        parameter is in two groups.

    Raises:
        ValueError: Unknown names, a backbone outside the model, empty or overlapping groups,
            groups outside the backbone, or backbone parameters left in no group.
    """
    if backbone is None:
        root_name = ""
    elif isinstance(backbone, str):
        root_name = _resolve_module_name(model, backbone)
    else:
        root_name = module_name_of(model, backbone)
    explicit = not isinstance(groups, str)
    root = model.get_submodule(root_name)

    parameter_groups: list[tuple[tuple[str, ...], list[str]]] = []
    if isinstance(groups, str):
        if groups not in GROUP_MODES:
            raise ValueError(
                f"groups must be one of {GROUP_MODES} or a list of modules/module names, "
                f"got {groups!r}"
            )
        # Hugging Face and timm models have their own rules (transformer_groups).
        library_groups = pretrained_model_groups(root, root_name) if groups == "auto" else None
        if library_groups is not None:
            parameter_groups = library_groups
        else:
            module_groups = auto_group_module_names(root, root_name, per_leaf=groups == "modules")
            parameter_groups = [(names, _parameters_under(model, names)) for names in module_groups]
    else:
        if not isinstance(groups, Sequence) or not groups:
            raise ValueError(
                f"groups must be 'auto', 'modules' or a non-empty list, got {groups!r}"
            )
        for names in _explicit_groups(model, groups):
            outside = [n for n in names if not is_under(n, root_name)]
            if outside:
                raise ValueError(f"group modules {outside} are outside the backbone {root_name!r}")
            parameter_groups.append((names, _parameters_under(model, names)))

    result = _validated(parameter_groups)
    if explicit and root_name:
        grouped = {name for group in result for name in group.parameter_names}
        ungrouped = [n for n in _parameters_under(model, [root_name]) if n not in grouped]
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

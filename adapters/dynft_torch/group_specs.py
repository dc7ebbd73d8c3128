"""Reading an explicit ``groups=[...]`` list: each entry is one group, shallowest first.

An entry is one item or a list of items (their union). An item is

* a submodule of the model, or a container holding submodules (``model.features[0:3]`` is a new
  ``nn.Sequential`` around the model's own blocks): resolved by module identity;
* a parameter of the model (by identity);
* a module name, a parameter name, or a parameter-name glob pattern (``"layer4.*"``,
  ``"blocks.1[0-1].*"``; ``*``, ``?`` and ``[...]`` as in ``fnmatch``).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

GroupItem = str | nn.Module | torch.Tensor
GroupSpec = GroupItem | Sequence[GroupItem]
_GLOB_CHARACTERS = "*?["


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


def parameters_under(model: nn.Module, module_names: Sequence[str]) -> list[str]:
    """Names of the parameters inside any of ``module_names``, in model order."""
    return [
        name
        for name, _ in model.named_parameters()
        if any(is_under(name, prefix) for prefix in module_names)
    ]


def _owner(parameter_name: str) -> str:
    return parameter_name.rpartition(".")[0]


def _module_names(model: nn.Module, module: nn.Module) -> list[str]:
    """Names of ``module`` or, for a container outside the model, of the modules it holds."""
    for name, candidate in model.named_modules(remove_duplicate=False):
        if candidate is module:
            return [name]
    children = list(module.children())
    if children and not any(True for _ in module.parameters(recurse=False)):
        try:
            return [name for child in children for name in _module_names(model, child)]
        except ValueError:
            pass
    return [module_name_of(model, module)]  # raises, naming the module


def similar_names(names: Sequence[str], item: str) -> str:
    """``"; similar names: [...]"`` for an error about the unknown ``item``, or ``""``."""
    containing = [name for name in names if name and (item in name or name in item)]
    misspelt = difflib.get_close_matches(item, [name for name in names if name], n=5)
    close = list(dict.fromkeys(containing + misspelt))[:5]
    return f"; similar names: {close}" if close else ""


def _resolve_item(
    model: nn.Module, item: object, parameter_names: dict[int, str]
) -> tuple[list[str], list[str]]:
    """``(module names, parameter names)`` that ``item`` adds to its group."""
    if isinstance(item, nn.Module):
        names = _module_names(model, item)
        return names, parameters_under(model, names)
    if isinstance(item, torch.Tensor):
        if id(item) not in parameter_names:
            raise ValueError(
                f"a tensor of shape {tuple(item.shape)} in groups is not a parameter of the "
                f"model {type(model).__name__}"
            )
        name = parameter_names[id(item)]
        return [_owner(name)], [name]
    if not isinstance(item, str):
        raise TypeError(
            "a group item must be a module, a parameter, a module or parameter name or a "
            f"name pattern, got {type(item).__name__}: {item!r}"
        )
    modules = dict(model.named_modules())
    every = list(parameter_names.values())
    if item in modules:
        return [item], parameters_under(model, [item])
    if item in every:
        return [_owner(item)], [item]
    if any(c in item for c in _GLOB_CHARACTERS):
        matched = [name for name in every if fnmatch.fnmatchcase(name, item)]
        if not matched:
            raise ValueError(f"pattern {item!r} in groups matches no parameter name")
        return sorted({_owner(n) for n in matched}), matched
    raise ValueError(
        f"unknown name {item!r} in groups: it is neither in model.named_modules() nor in "
        f"model.named_parameters(){similar_names(list(modules) + every, item)}"
    )


def explicit_groups(
    model: nn.Module, specs: Sequence[GroupSpec]
) -> list[tuple[tuple[str, ...], list[str]]]:
    """``(module names, parameter names)`` of every group in ``specs``, in order.

    Raises:
        TypeError: An entry or item of an unsupported type.
        ValueError: An unknown name, a pattern matching nothing, a module or tensor outside
            the model, or an empty group.
    """
    parameter_names = {id(p): name for name, p in model.named_parameters()}
    order = {name: position for position, name in enumerate(parameter_names.values())}
    resolved: list[tuple[tuple[str, ...], list[str]]] = []
    for spec in specs:
        if isinstance(spec, (str, nn.Module, torch.Tensor)):
            items: list[object] = [spec]
        elif isinstance(spec, Sequence):
            items = list(spec)
        else:
            raise TypeError(
                f"group {len(resolved)} must be a module, a parameter, a name, a pattern or a "
                f"list of those, got {type(spec).__name__}: {spec!r}"
            )
        if not items:
            raise ValueError(f"group {len(resolved)} is empty; every group needs an item")
        module_names: list[str] = []
        names: set[str] = set()
        for item in items:
            modules, parameters = _resolve_item(model, item, parameter_names)
            module_names += [m for m in modules if m not in module_names]
            names.update(parameters)
        resolved.append((tuple(module_names), sorted(names, key=order.__getitem__)))
    return resolved

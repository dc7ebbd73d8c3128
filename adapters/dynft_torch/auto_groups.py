"""Architecture-aware default groups (``groups="auto"``) and the per-leaf split (``"modules"``).

Hugging Face ``transformers`` models and timm models with ``group_matcher`` (timm's own
fine-grained blocks, classifier excluded, via ``timm_parameter_groups``) are split first, by
``transformer_groups``. The other recognised families, checked in this order:

* EfficientNet-Lite (``efficientnet_lite_pytorch``): stem, every ``_blocks[i]``, conv head.
* torchvision ResNet: stem (``conv1``/``bn1``), then every block of ``layer1``..``layer4``.
* torchvision DenseNet: stem, every dense layer and transition.
* torchvision MobileNetV2/V3, EfficientNet/V2, VGG, or any ``nn.Sequential`` backbone:
  every child of ``features`` (or of the Sequential) that owns parameters.
* torchvision Inception v3: every top-level block (``Conv2d_*``, ``Mixed_*``).
* Anything else: leaf modules owning parameters, in registration order.

Groups made only of BatchNorm layers (e.g. VGG-BN's norms, DenseNet's ``norm5``) hold nothing
that can be trained under the frozen-BatchNorm policy, so they are merged into the group before
them (the one after, for the first).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

HEAD_NAMES = ("fc", "classifier", "head", "heads", "AuxLogits", "_fc", "last_linear")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _owns_parameters(module: nn.Module, recurse: bool = True) -> bool:
    return any(True for _ in module.parameters(recurse=recurse))


def _submodule(root: nn.Module, prefix: str, name: str) -> nn.Module:
    """The module that ``name`` (a name in the whole model) addresses inside ``root``."""
    return root.get_submodule(name[len(prefix) + 1 :] if prefix else name)


def _children_with_parameters(module: nn.Module, prefix: str) -> list[list[str]]:
    return [
        [_join(prefix, name)]
        for name, child in module.named_children()
        if name not in HEAD_NAMES and _owns_parameters(child)
    ]


def _leaf_modules(module: nn.Module, prefix: str) -> list[list[str]]:
    return [
        [_join(prefix, name)]
        for name, child in module.named_modules()
        if name.split(".")[0] not in HEAD_NAMES and _owns_parameters(child, recurse=False)
    ]


def _only_batchnorm(root: nn.Module, root_name: str, module_names: list[str]) -> bool:
    for name in module_names:
        for sub in _submodule(root, root_name, name).modules():
            if _owns_parameters(sub, recurse=False) and not isinstance(sub, _BatchNorm):
                return False
    return True


def _merge_batchnorm_only(
    root: nn.Module, root_name: str, groups: list[list[str]]
) -> list[list[str]]:
    merged: list[list[str]] = []
    pending: list[str] = []
    for names in groups:
        if _only_batchnorm(root, root_name, names):
            if merged:
                merged[-1].extend(names)
            else:
                pending.extend(names)
            continue
        merged.append(pending + names)
        pending = []
    if pending:
        merged.append(pending)
    return merged


def _efficientnet_lite(root: nn.Module, prefix: str) -> list[list[str]] | None:
    blocks = getattr(root, "_blocks", None)
    if not (isinstance(blocks, nn.ModuleList) and hasattr(root, "_conv_stem")):
        return None
    groups = [[_join(prefix, "_conv_stem"), _join(prefix, "_bn0")]]
    groups += [[_join(prefix, f"_blocks.{i}")] for i in range(len(blocks))]
    if hasattr(root, "_conv_head"):
        groups.append([_join(prefix, "_conv_head"), _join(prefix, "_bn1")])
    return [[n for n in names if _exists(root, prefix, n)] for names in groups]


def _exists(root: nn.Module, prefix: str, name: str) -> bool:
    try:
        _submodule(root, prefix, name)
    except AttributeError:
        return False
    return True


def _resnet(root: nn.Module, prefix: str) -> list[list[str]] | None:
    if not all(hasattr(root, n) for n in ("conv1", "bn1", "layer1", "layer4")):
        return None
    groups = [[_join(prefix, "conv1"), _join(prefix, "bn1")]]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        groups += _children_with_parameters(getattr(root, layer), _join(prefix, layer))
    return groups


def _densenet_features(features: nn.Module, prefix: str) -> list[list[str]] | None:
    if not hasattr(features, "denseblock1"):
        return None
    groups: list[list[str]] = []
    stem: list[str] = []
    for name, child in features.named_children():
        full = _join(prefix, name)
        if name.startswith("denseblock"):
            if stem:
                groups.append(stem)
                stem = []
            groups += _children_with_parameters(child, full)
        elif name.startswith("transition"):
            groups.append([full])
        elif _owns_parameters(child):
            stem.append(full)
    if stem:
        groups.append(stem)
    return groups


def _feature_blocks(root: nn.Module, prefix: str) -> list[list[str]] | None:
    features = getattr(root, "features", None)
    if isinstance(features, nn.Module):
        dense = _densenet_features(features, _join(prefix, "features"))
        if dense is not None:
            return dense
        if isinstance(features, nn.Sequential):
            return _children_with_parameters(features, _join(prefix, "features"))
    if isinstance(root, nn.Sequential):
        return _densenet_features(root, prefix) or _children_with_parameters(root, prefix)
    return None


def _inception(root: nn.Module, prefix: str) -> list[list[str]] | None:
    if not hasattr(root, "Mixed_5b"):
        return None
    return _children_with_parameters(root, prefix)


def auto_group_module_names(
    root: nn.Module, root_name: str, per_leaf: bool
) -> list[tuple[str, ...]]:
    """Module-name groups for ``groups="auto"`` (``per_leaf=False``) or ``"modules"``.

    Args:
        root: The backbone module (or the whole model); its children named like a head
            (``HEAD_NAMES``) are left out.
        root_name: Its name inside the model (``""`` for the model itself).
        per_leaf: One group per leaf module owning parameters instead of family blocks.

    Returns:
        Module-name groups, shallowest first.
    """
    if per_leaf:
        return [tuple(names) for names in _leaf_modules(root, root_name)]
    for finder in (_efficientnet_lite, _resnet, _feature_blocks, _inception):
        found = finder(root, root_name)
        if found:
            return [tuple(names) for names in _merge_batchnorm_only(root, root_name, found)]
    leaves = _leaf_modules(root, root_name)
    return [tuple(names) for names in _merge_batchnorm_only(root, root_name, leaves)]


def timm_parameter_groups(root: nn.Module, root_name: str) -> list[list[str]] | None:
    """Parameter-name groups from a timm model's ``group_matcher``, or ``None`` if not timm.

    The classifier returned by ``get_classifier()`` (both heads of a distilled model) is the
    head and belongs to no group.
    """
    matcher = getattr(root, "group_matcher", None)
    if not callable(matcher):
        return None
    try:
        from timm.models import group_parameters
    except ImportError:
        return None
    head_ids: set[int] = set()
    get_classifier = getattr(root, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        # Distilled models (DeiT) return their two heads as a tuple.
        for head in classifier if isinstance(classifier, tuple) else (classifier,):
            if isinstance(head, nn.Module):
                head_ids |= {id(p) for p in head.parameters()}
    parameter_ids = {name: id(p) for name, p in root.named_parameters()}
    grouped = group_parameters(root, matcher(coarse=False))
    groups = []
    for names in grouped.values():
        kept = [_join(root_name, n) for n in names if parameter_ids[n] not in head_ids]
        if kept:
            groups.append(kept)
    return groups or None

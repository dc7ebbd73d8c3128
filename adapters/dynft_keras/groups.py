"""Splitting a Keras backbone into the ordered groups that the scheduler unfreezes.

Groups are ordered from the input (index 0) to the head (index ``L - 1``),
matching [`UnfreezeScheduler`][dynft_core.UnfreezeScheduler]. BatchNormalization layers are
never part of a group: they stay frozen for the whole run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import keras

from .backbone import Backbone, BackboneSpec, as_backbone

GROUP_MODES = ("layers", "blocks")

# Name prefixes of the keras.applications families: a layer whose name matches
# belongs to the block captured by the first group of the pattern.
BLOCK_PREFIXES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("MobileNetV2/V3", re.compile(r"^(block_\d+)_")),
    ("MobileNetV2/V3", re.compile(r"^(expanded_conv(?:_\d+)?)_")),
    ("ResNet/ResNetV2/DenseNet", re.compile(r"^(conv\d+_block\d+)_")),
    ("DenseNet transition", re.compile(r"^(pool\d+)_")),
    ("Xception/VGG/EfficientNet/EfficientNetV2", re.compile(r"^(block\d+[a-z]?)_")),
)
# InceptionV3 leaves its convolutions unnamed; the concatenation ``mixedN``
# closes block N, so every layer since the previous ``mixed`` belongs to it.
BLOCK_BOUNDARY = re.compile(r"^(mixed\d+)$")

GroupSpec = str | Sequence[Sequence[Any]]


def is_batch_norm(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is a BatchNormalization layer (always kept frozen)."""
    return isinstance(layer, keras.layers.BatchNormalization)


def owns_trainable_weights(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` (or a sublayer of it) created weights meant to be trained.

    Reads the structural variable lists rather than ``layer.trainable_weights``
    because a layer frozen beforehand reports no trainable weights at all.
    """
    return any(sub._trainable_variables for sub in layer._flatten_layers(include_self=True))


def _unfreezable(layer: keras.layers.Layer) -> bool:
    return owns_trainable_weights(layer) and not is_batch_norm(layer)


def layer_groups(backbone: Backbone) -> list[list[keras.layers.Layer]]:
    """One group per backbone layer owning trainable weights (BatchNormalization excluded).

    This is what the paper's layer counts mean.
    """
    return [[layer] for layer in backbone.units if _unfreezable(layer)]


def _block_key(name: str) -> str | None:
    for _, pattern in BLOCK_PREFIXES:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return None


def block_groups(backbone: Backbone) -> list[list[keras.layers.Layer]]:
    """Group consecutive layers by the block names of the keras.applications families.

    Rules, applied to the layers in input-to-output order:

    * a layer whose name starts with a known block prefix (``block_3_``,
      ``expanded_conv_``, ``conv4_block2_``, ``pool3_``, ``block5_``,
      ``block2b_``) belongs to that block;
    * an InceptionV3 ``mixedN`` concatenation closes block ``mixedN``: every
      unnamed layer since the previous boundary belongs to it;
    * an unmatched layer lying between two layers of the same block (an
      Xception shortcut convolution) belongs to that block;
    * any other run of consecutive unmatched layers (a stem such as
      ``Conv1``/``conv1_conv``, or a top such as ``Conv_1``/``top_conv``)
      forms its own group.

    Only layers owning trainable weights are kept in the groups.

    Raises:
        ValueError: No layer of ``backbone`` carries a known block name.
    """
    units = list(backbone.units)
    keys: list[str | None] = [_block_key(layer.name) for layer in units]
    if any(BLOCK_BOUNDARY.match(layer.name) for layer in units):
        pending: list[int] = []
        for index, layer in enumerate(units):
            boundary = BLOCK_BOUNDARY.match(layer.name)
            if boundary:
                for waiting in pending + [index]:
                    keys[waiting] = boundary.group(1)
                pending = []
            elif keys[index] is None:
                pending.append(index)
    if all(key is None for key in keys):
        families = sorted({family for family, _ in BLOCK_PREFIXES} | {"InceptionV3"})
        raise ValueError(
            f"groups='blocks' found no known block names in backbone {backbone.name!r} "
            f"(known families: {', '.join(families)}); use groups='layers' or pass an "
            "explicit list of groups"
        )
    for index, key in enumerate(keys):
        if key is not None:
            continue
        before = next((keys[i] for i in range(index - 1, -1, -1) if keys[i] is not None), None)
        after = next((keys[i] for i in range(index + 1, len(keys)) if keys[i] is not None), None)
        if before is not None and before == after:
            keys[index] = before

    groups: list[list[keras.layers.Layer]] = []
    previous_key: object = object()
    for layer, key in zip(units, keys, strict=True):
        if not _unfreezable(layer):
            continue
        # Unmatched layers share the key None, so a stem and a top never merge
        # unless they are consecutive among the weighted layers.
        if key != previous_key or not groups:
            groups.append([])
        groups[-1].append(layer)
        previous_key = key
    return groups


def explicit_groups(
    backbone: Backbone, spec: Sequence[Sequence[Any]]
) -> list[list[keras.layers.Layer]]:
    """Resolve a list of groups given as layers or layer names of ``backbone``.

    Raises:
        ValueError: A group is empty, a name is unknown, a layer is outside the
            backbone, or a layer appears in two groups.
        TypeError: A group is not a list, or an entry is neither a layer nor a name.
    """
    by_name: dict[str, keras.layers.Layer] = {}
    members: set[int] = set()
    for root in backbone.containers + backbone.units:
        for layer in root._flatten_layers(include_self=True):
            by_name.setdefault(layer.name, layer)
            members.add(id(layer))
    resolved: list[list[keras.layers.Layer]] = []
    owner: dict[int, int] = {}
    for group_index, group in enumerate(spec):
        if isinstance(group, str | keras.layers.Layer) or not isinstance(group, Sequence):
            raise TypeError(
                f"groups[{group_index}] must be a list of layers or layer names, got {group!r}"
            )
        if len(group) == 0:
            raise ValueError(f"groups[{group_index}] is empty; every group needs a layer")
        layers: list[keras.layers.Layer] = []
        for entry in group:
            if isinstance(entry, str):
                if entry not in by_name:
                    raise ValueError(
                        f"groups[{group_index}] names {entry!r}, but backbone "
                        f"{backbone.name!r} has no layer of that name"
                    )
                layer = by_name[entry]
            elif isinstance(entry, keras.layers.Layer):
                if id(entry) not in members:
                    raise ValueError(
                        f"groups[{group_index}] holds layer {entry.name!r}, which is not "
                        f"inside backbone {backbone.name!r}"
                    )
                layer = entry
            else:
                raise TypeError(
                    f"groups[{group_index}] entries must be layers or layer names, got {entry!r}"
                )
            if id(layer) in owner:
                raise ValueError(
                    f"layer {layer.name!r} is in groups[{owner[id(layer)]}] and "
                    f"groups[{group_index}]; a layer may belong to one group only"
                )
            owner[id(layer)] = group_index
            layers.append(layer)
        resolved.append(layers)
    if not resolved:
        raise ValueError("groups is an empty list; give at least one group")
    return resolved


def resolve_groups(
    backbone: BackboneSpec | Backbone, groups: GroupSpec
) -> list[list[keras.layers.Layer]]:
    """Turn a ``groups`` argument into ordered lists of backbone layers.

    Args:
        backbone: The pretrained part of the model: a layer or model (nested in the fitted
            model or flattened into it) or a list of its layers.
        groups: ``"layers"`` (one group per layer owning trainable weights,
            BatchNormalization excluded), ``"blocks"`` (see
            ``block_groups``), or an explicit list of lists
            of layers or layer names, shallowest group first.

    Returns:
        The groups, index 0 next to the input.

    Raises:
        TypeError: ``groups`` is neither a string nor a list.
        ValueError: Unknown mode, or the backbone yields no group (see also
            ``explicit_groups`` and
            ``block_groups``).
    """
    backbone = as_backbone(backbone)
    if isinstance(groups, str):
        if groups == "layers":
            resolved = layer_groups(backbone)
        elif groups == "blocks":
            resolved = block_groups(backbone)
        else:
            raise ValueError(
                f"groups must be one of {GROUP_MODES} or a list of groups, got {groups!r}"
            )
        if not resolved:
            raise ValueError(
                f"backbone {backbone.name!r} has no layer owning trainable weights "
                "(BatchNormalization excluded); there is nothing to unfreeze"
            )
        return resolved
    if not isinstance(groups, Sequence):
        raise TypeError(
            f"groups must be one of {GROUP_MODES} or a list of groups (lists of layers or "
            f"layer names), got {type(groups).__name__}: {groups!r}"
        )
    return explicit_groups(backbone, groups)


def attached_batch_norm(
    backbone: Backbone, groups: Sequence[Sequence[keras.layers.Layer]]
) -> list[list[keras.layers.Layer]]:
    """The BatchNormalization layers that train with each group when ``train_batchnorm=True``.

    A BatchNormalization belongs to the group of the closest layer owning weights before it
    (the convolution it normalises), or to the group holding it as a sublayer. One after a
    layer outside every group, or before any weighted layer, belongs to none and stays frozen.
    """
    owner: dict[int, int] = {}
    for index, group in enumerate(groups):
        for layer in group:
            for sub in layer._flatten_layers(include_self=True):
                owner.setdefault(id(sub), index)
    attached: list[list[keras.layers.Layer]] = [[] for _ in groups]
    seen: set[int] = set()
    last: int | None = None
    for unit in backbone.units:
        if is_batch_norm(unit):
            index = owner.get(id(unit), last)
            if index is not None:
                attached[index].append(unit)
                seen.add(id(unit))
        elif owns_trainable_weights(unit):
            last = owner.get(id(unit))
    for index, group in enumerate(groups):
        for layer in group:
            for sub in layer._flatten_layers(include_self=True):
                if is_batch_norm(sub) and id(sub) not in seen:
                    attached[index].append(sub)
                    seen.add(id(sub))
    return attached

"""Setting the ``trainable`` flags of a backbone for a given number of unfrozen groups."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
import numpy as np

from .backbone import Backbone, BackboneSpec, as_backbone
from .groups import is_batch_norm

Groups = Sequence[Sequence[keras.layers.Layer]]


def apply_trainable(
    backbone: BackboneSpec | Backbone,
    groups: Groups,
    num_unfrozen: int,
    batch_norm: Groups | None = None,
) -> None:
    """Make exactly the ``num_unfrozen`` deepest groups of ``backbone`` trainable.

    Every other backbone layer is frozen, including layers that belong to no
    group. Every BatchNormalization layer of the backbone is set to
    ``trainable=False``, which in Keras 3 also runs it in inference mode (moving
    statistics are used and never updated), even inside an unfrozen group, unless it is
    listed for that group in ``batch_norm`` (``train_batchnorm=True``).
    Layers outside the backbone (the head) are left as they are.

    Args:
        backbone: The pretrained part (see [`as_backbone`][dynft_keras.as_backbone]).
        groups: The resolved groups, index 0 next to the input.
        num_unfrozen: How many of the deepest groups to make trainable
            (``0 <= num_unfrozen <= len(groups)``).
        batch_norm: Per group, the BatchNormalization layers that train with it
            (``attached_batch_norm``); ``None``
            keeps every one frozen.

    Raises:
        ValueError: ``num_unfrozen`` is out of range.
    """
    if not 0 <= num_unfrozen <= len(groups):
        raise ValueError(
            f"num_unfrozen must be between 0 and {len(groups)} (the number of groups), "
            f"got {num_unfrozen}"
        )
    backbone = as_backbone(backbone)
    for container in backbone.containers:
        _set_trainable(container, True)
    for unit in backbone.units:
        _set_trainable(unit, False)
    first = len(groups) - num_unfrozen
    for group in groups[first:]:
        for layer in group:
            _set_trainable(layer, True)
    # Setting trainable=True recurses into sublayers, so BN is frozen last.
    training_bn = {id(bn) for per_group in (batch_norm or [])[first:] for bn in per_group}
    for unit in backbone.units:
        for layer in unit._flatten_layers(include_self=True):
            if is_batch_norm(layer):
                _set_trainable(layer, id(layer) in training_bn)


def trainable_flags(model: keras.Model) -> list[tuple[keras.layers.Layer, bool]]:
    """Every layer's ``trainable`` flag, outermost first, for ``restore_trainable_flags``."""
    return [(layer, layer.trainable) for layer in model._flatten_layers(include_self=True)]


def restore_trainable_flags(flags: Sequence[tuple[keras.layers.Layer, bool]]) -> None:
    """Set the flags back; outermost first, so a container's recursion is overridden below."""
    for layer, value in flags:
        _set_trainable(layer, value)


def _set_trainable(layer: keras.layers.Layer, value: bool) -> None:
    # On TensorFlow the attribute tracking skips ``layer.trainable = value`` when the layer
    # already holds ``value``, and with it the recursion into the sublayers: unfreezing a
    # nested model that was never frozen itself would leave its layers frozen.
    type(layer).trainable.fset(layer, value)


def group_variables(
    group: Sequence[keras.layers.Layer], batch_norm: Sequence[keras.layers.Layer] = ()
) -> list[keras.Variable]:
    """The weights of a group's layers that training may change.

    BatchNormalization layers are left out unless listed in ``batch_norm`` (they then bring
    their gamma and beta).
    """
    variables: dict[int, keras.Variable] = {}
    training_bn = {id(bn) for bn in batch_norm}
    for layer in list(group) + list(batch_norm):
        for sub in layer._flatten_layers(include_self=True):
            if not is_batch_norm(sub) or id(sub) in training_bn:
                variables.update((id(v), v) for v in sub._trainable_variables)
    return list(variables.values())


def batch_norm_state(batch_norm: Sequence[keras.layers.Layer]) -> list[keras.Variable]:
    """Every variable of ``batch_norm`` layers, moving statistics included."""
    return [v for layer in batch_norm for v in layer.weights]


def warn_zero_gamma(backbone: Backbone, trained: Groups) -> None:
    """Warn about frozen BatchNormalization layers whose gamma is all zero.

    Such a layer (a zero-initialised residual branch, a random init) outputs its beta only,
    so the branch it closes contributes nothing for the whole run.
    """
    training = {id(bn) for per_group in trained for bn in per_group}
    blocked = [
        layer.name
        for unit in backbone.units
        for layer in unit._flatten_layers(include_self=True)
        if is_batch_norm(layer)
        and id(layer) not in training
        and layer.gamma is not None
        and not np.any(keras.ops.convert_to_numpy(layer.gamma))
    ]
    if blocked:
        warnings.warn(
            f"dynft: the frozen BatchNormalization layer(s) {blocked[:5]}"
            f"{' ...' if len(blocked) > 5 else ''} ({len(blocked)} in all) have gamma = 0, "
            "so their branches output a constant for the whole run; load pretrained "
            "weights or pass train_batchnorm=True",
            UserWarning,
            stacklevel=3,
        )

"""Setting the ``trainable`` flags of a backbone for a given number of unfrozen groups."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from .groups import is_batch_norm, iter_units


def apply_trainable(
    backbone: keras.layers.Layer,
    groups: Sequence[Sequence[keras.layers.Layer]],
    num_unfrozen: int,
) -> None:
    """Make exactly the ``num_unfrozen`` deepest groups of ``backbone`` trainable.

    Every other backbone layer is frozen, including layers that belong to no
    group. Every BatchNormalization layer of the backbone is set to
    ``trainable=False``, which in Keras 3 also runs it in inference mode (moving
    statistics are used and never updated), even inside an unfrozen group.
    Layers outside the backbone (the head) are left as they are.

    Args:
        backbone: The pretrained sub-model.
        groups: The resolved groups, index 0 next to the input.
        num_unfrozen: How many of the deepest groups to make trainable
            (``0 <= num_unfrozen <= len(groups)``).

    Raises:
        ValueError: ``num_unfrozen`` is out of range.
    """
    if not 0 <= num_unfrozen <= len(groups):
        raise ValueError(
            f"num_unfrozen must be between 0 and {len(groups)} (the number of groups), "
            f"got {num_unfrozen}"
        )
    # The backbone and the nested models inside it must stay trainable: a
    # frozen container hides the variables of every layer below it.
    _set_trainable(backbone, True)
    for unit in iter_units(backbone):
        _set_trainable(unit, False)
    for group in groups[len(groups) - num_unfrozen :]:
        for layer in group:
            _set_trainable(layer, True)
    # Setting trainable=True recurses into sublayers, so BN is frozen last.
    for layer in backbone._flatten_layers(include_self=True):
        if is_batch_norm(layer):
            _set_trainable(layer, False)


def _set_trainable(layer: keras.layers.Layer, value: bool) -> None:
    # On TensorFlow the attribute tracking skips ``layer.trainable = value`` when the layer
    # already holds ``value``, and with it the recursion into the sublayers: unfreezing a
    # nested model that was never frozen itself would leave its layers frozen.
    type(layer).trainable.fset(layer, value)


def group_variables(group: Sequence[keras.layers.Layer]) -> list[keras.Variable]:
    """The weights of a group's layers that training may change (BatchNormalization excluded)."""
    variables: list[keras.Variable] = []
    for layer in group:
        for sub in layer._flatten_layers(include_self=True):
            if not is_batch_norm(sub):
                variables.extend(sub._trainable_variables)
    return variables

"""Where the pretrained part sits in the fitted model, however the model was wired.

Keras transfer learning comes in two shapes. Nested: ``base`` is called as one layer of the
model, ``model = keras.Sequential([base, head])``. Flattened: ``keras.Model(base.input,
head(base.output))`` inlines ``base``'s layers into the model, so ``base`` itself is not a
layer of it, but all its layers are. A backbone may therefore be given as the base model
(either shape), as a list of layers (e.g. ``model.layers[1:-2]``) or as a list of layer names
(looked up in the fitted model).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import keras

BackboneSpec = keras.layers.Layer | Sequence[keras.layers.Layer] | Sequence[str]


@dataclass(frozen=True)
class Backbone:
    """The backbone as the fine-tuning sees it.

    Attributes:
        name: For messages: the base model's name, or the first and last layer names.
        units: The backbone's layers in input-to-output order, nested models expanded.
        containers: Nested models holding units; they must stay trainable, because a frozen
            container hides the variables of every layer below it.
    """

    name: str
    units: tuple[keras.layers.Layer, ...]
    containers: tuple[keras.layers.Layer, ...]

    def check_in(self, model: keras.Model) -> None:
        """Raise ``ValueError`` unless every layer of the backbone is a layer of ``model``."""
        inside = {id(layer) for layer in model._flatten_layers(include_self=False)}
        missing = [unit.name for unit in self.units if id(unit) not in inside]
        if missing:
            raise ValueError(
                f"backbone {self.name!r} is not a layer of model {model.name!r} (its layers "
                f"{missing[:3]} are not in the model); pass the pretrained base the fitted "
                "model contains, nested or flattened, or a list of the model's layers"
            )


def _expand(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """The units below ``layer``: a nested model is expanded, any other layer is one unit."""
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            yield from _expand(inner)
    else:
        yield layer


def _nested_models(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    if isinstance(layer, keras.Model):
        yield layer
        for inner in layer.layers:
            yield from _nested_models(inner)


def _from_layers(name: str, layers: Sequence[keras.layers.Layer]) -> Backbone:
    units = tuple(unit for layer in layers for unit in _expand(layer))
    containers = tuple(model for layer in layers for model in _nested_models(layer))
    return Backbone(name, units, containers)


def is_name_list(spec: object) -> bool:
    """Whether ``spec`` is a non-empty list of layer names (resolved once the model is known)."""
    return (
        isinstance(spec, Sequence)
        and not isinstance(spec, str)
        and len(spec) > 0
        and all(isinstance(entry, str) for entry in spec)
    )


def as_backbone(spec: BackboneSpec | Backbone, model: keras.Model | None = None) -> Backbone:
    """Resolve a ``backbone`` argument.

    Args:
        spec: A layer or model (nested or flattened into the fitted model), a list of layers,
            or a list of layer names of ``model``.
        model: The fitted model; needed for layer names only.

    Raises:
        TypeError: ``spec`` is none of these (a single string included).
        ValueError: The list is empty, a name is unknown or names two layers, or names are
            given without a model.
    """
    if isinstance(spec, Backbone):
        return spec
    if isinstance(spec, keras.layers.Layer):
        return _from_layers(spec.name, [spec])
    if isinstance(spec, str) or not isinstance(spec, Sequence):
        raise TypeError(
            "backbone must be a keras Layer or Model, a list of layers or a list of layer "
            f"names, got {spec!r}"
        )
    if len(spec) == 0:
        raise ValueError("backbone is an empty list; give the pretrained layers")
    if is_name_list(spec):
        if model is None:
            raise ValueError("a backbone given as layer names needs the model to look them up")
        by_name: dict[str, list[keras.layers.Layer]] = {}
        for layer in model._flatten_layers(include_self=False):
            by_name.setdefault(layer.name, []).append(layer)
        layers = []
        for name in spec:
            found = by_name.get(name, [])
            if len(found) != 1:
                problem = "has no layer" if not found else f"has {len(found)} layers"
                raise ValueError(f"backbone names {name!r}, but model {model.name!r} {problem} "
                                 "of that name")  # fmt: skip
            layers.append(found[0])
        return _from_layers(f"{spec[0]}..{spec[-1]}", layers)
    if not all(isinstance(entry, keras.layers.Layer) for entry in spec):
        raise TypeError(
            f"a backbone list must hold only layers or only layer names, got {list(spec)!r}"
        )
    return _from_layers(f"{spec[0].name}..{spec[-1].name}", list(spec))

"""Cutting a functional Keras model between its frozen and its trainable part.

The graph of a functional model is explicit, so the cut is found structurally: the layer calls of
the backbone are taken in execution order, and a cut after a call is *valid* when its output is
the only tensor computed so far that is still read afterwards (no skip connection or parallel
branch crosses it). The cut is the deepest valid one before the first call of an unfrozen group.
In the outer model, the backbone's output must likewise be the only tensor that flows past it.

Two models share the layers (and so the weights) of the original: ``prefix`` (model input ->
features at the cut, always run in inference mode) and ``rest`` (features -> model output).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from .backbone import Backbone
from .groups import is_batch_norm
from .weight_fingerprint import fingerprint


class CutError(ValueError):
    """The model cannot be cut between its frozen and its trainable part."""


def graph_of(model: keras.Model, role: str) -> keras.Model:
    """The functional graph of ``model`` (a ``Sequential``'s inner one).

    Raises:
        CutError: ``model`` is a subclassed model (its graph is Python code).
    """
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_nodes_by_depth"):
        raise CutError(
            f"the {role} {model.name!r} is a subclassed {type(model).__name__}; the feature "
            "cache needs a functional or Sequential model to find the cut"
        )
    return graph


def execution_order(graph: keras.Model) -> list[Any]:
    """The layer calls (nodes) of ``graph`` in the order it runs them, inputs left out."""
    return [
        node
        for depth in sorted(graph._nodes_by_depth, reverse=True)
        for node in graph._nodes_by_depth[depth]
        if not node.is_input
    ]


def valid_cuts(graph: keras.Model, nodes: Sequence[Any]) -> list[bool]:
    """For each node, whether cutting after it leaves its single output as the only live tensor."""
    produced = {id(t): -1 for t in graph.inputs}
    last_use = {id(t): len(nodes) for t in graph.outputs}
    for position, node in enumerate(nodes):
        for tensor in node.input_tensors:
            last_use[id(tensor)] = max(last_use.get(id(tensor), -1), position)
        for tensor in node.output_tensors:
            produced[id(tensor)] = position
    valid = []
    live_until = max((last_use.get(id(t), -1) for t in graph.inputs), default=-1)
    for position, node in enumerate(nodes):
        outputs = node.output_tensors
        valid.append(len(outputs) == 1 and live_until <= position)
        for tensor in outputs:
            live_until = max(live_until, last_use.get(id(tensor), -1))
    return valid


def _layers_of(node: Any) -> list[keras.layers.Layer]:
    return list(node.operation._flatten_layers(include_self=True))


def _depends_on_training(layer: keras.layers.Layer) -> bool:
    return (
        bool(getattr(layer, "_call_has_training_arg", False))
        and not is_batch_norm(layer)
        and not isinstance(layer, keras.Model)
    )


@dataclass
class FrozenPrefix:
    """The model cut after one layer call of its backbone.

    Attributes:
        cut_name: The layer after which the model is cut.
        prefix: Model input -> features at the cut (call it with ``training=False``).
        rest: Features -> model output (trainable layers; call it like the model).
        frozen_layers: The layers computed by ``prefix``.
        inference_layers: Names of layers of the frozen part that behave differently in
            training (dropout ...): through the cache they always run in inference mode.
        fingerprint: Returns a value that changes when a weight of the frozen part changes.
    """

    cut_name: str
    prefix: keras.Model
    rest: keras.Model
    frozen_layers: list[keras.layers.Layer]
    inference_layers: list[str]
    fingerprint: Callable[[], Hashable]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features."""
        return tuple(self.prefix.outputs[0].shape[1:])


def nested_base(backbone: Backbone) -> keras.layers.Layer:
    """The one nested model that holds exactly the backbone's layers (the cut runs inside it).

    Raises:
        CutError: The backbone is a list of layers, or layers of several nested models.
    """
    units = {id(unit) for unit in backbone.units}
    for container in backbone.containers[:1]:
        inside = {id(layer) for layer in container._flatten_layers(include_self=False)}
        if units <= inside:
            return container
    raise CutError(
        f"the feature cache needs the backbone {backbone.name!r} as one pretrained model called "
        "as a layer of the model (keras.Sequential([base, head]) or head(base(inputs))), not a "
        "list of layers"
    )


def _backbone_node(outer: keras.Model, backbone: keras.layers.Layer) -> tuple[list[Any], int]:
    nodes = execution_order(outer)
    positions = [i for i, node in enumerate(nodes) if node.operation is backbone]
    if len(positions) != 1:
        raise CutError(
            f"the backbone {backbone.name!r} must be called exactly once by the model's own "
            f"graph, found {len(positions)} calls (it may sit inside a nested model, or the "
            "model was built as keras.Model(base.input, head(base.output)), which inlines the "
            "base's layers: build it as head(base(inputs)) to cache features)"
        )
    return nodes, positions[0]


def _check_outer(outer: keras.Model, nodes: list[Any], position: int) -> None:
    node = nodes[position]
    backbone = node.operation
    if len(outer.inputs) != 1 or len(node.input_tensors) != 1 or len(outer.outputs) != 1:
        raise CutError("the feature cache supports models with one input and one output")
    if len(node.output_tensors) != 1:
        raise CutError(f"the backbone {backbone.name!r} has several outputs; it needs one")
    if not valid_cuts(outer, nodes)[position]:
        raise CutError(
            f"the model reads a tensor computed before its backbone {node.operation.name!r} "
            "after it (a skip connection around the backbone): there is no single cut"
        )
    for before in nodes[:position]:
        for layer in _layers_of(before):
            if layer.trainable_weights and not is_batch_norm(layer):
                raise CutError(
                    f"layer {layer.name!r} runs before the backbone and has trainable weights; "
                    "the cache would freeze it"
                )
            if _depends_on_training(layer):
                raise CutError(
                    f"layer {layer.name!r} ({type(layer).__name__}) runs before the backbone and "
                    "behaves differently in training (augmentation, noise, dropout); the cache "
                    "computes it in inference mode. Augment in the data pipeline instead"
                )


def _sub_model(inputs: Any, outputs: Any) -> Any:
    """``inputs -> outputs`` of an existing graph, or ``None`` when they are the same tensor."""
    return None if outputs is inputs else keras.Model(inputs, outputs)


def plan_cut(
    model: keras.Model,
    backbone: keras.layers.Layer,
    groups: Sequence[Sequence[keras.layers.Layer]],
    num_frozen: int,
) -> FrozenPrefix | None:
    """The deepest valid cut below the unfrozen groups, ``None`` if none lies in the backbone.

    Raises:
        CutError: The model or backbone is not functional, the backbone is not called once by
            the model's graph, something other than the backbone's output flows past it, a
            layer before the backbone trains or depends on ``training``, or a frozen group runs
            after an unfrozen one.
    """
    outer = graph_of(model, "model")
    inner = graph_of(backbone, "backbone")
    outer_nodes, position = _backbone_node(outer, backbone)
    _check_outer(outer, outer_nodes, position)
    backbone_call = outer_nodes[position]
    nodes = execution_order(inner)
    unfrozen = {id(layer) for group in groups[num_frozen:] for layer in group}
    frozen = {id(layer) for group in groups[:num_frozen] for layer in group}
    trainable_at = [any(id(x) in unfrozen for x in _layers_of(node)) for node in nodes]
    first_trainable = trainable_at.index(True) if any(trainable_at) else len(nodes)
    for node in nodes[first_trainable:]:
        late = [x.name for x in _layers_of(node) if id(x) in frozen]
        if late:
            raise CutError(
                f"frozen layer {late[0]!r} runs after {nodes[first_trainable].operation.name!r} "
                "of an unfrozen group: the frozen groups are not a prefix of the backbone"
            )
    valid = valid_cuts(inner, nodes)
    cuts = [i for i in range(first_trainable) if valid[i]]
    if not cuts:
        return None
    cut = cuts[-1]
    features = nodes[cut].output_tensors[0]

    backbone_prefix = keras.Model(inner.inputs, features)
    backbone_input = backbone_call.input_tensors[0]
    before = _sub_model(outer.inputs[0], backbone_input)
    inputs = keras.Input(batch_shape=outer.inputs[0].shape, dtype=outer.inputs[0].dtype)
    prefix = keras.Model(inputs, backbone_prefix(before(inputs) if before else inputs))

    cut_input = keras.Input(batch_shape=features.shape, dtype=features.dtype)
    after_cut = _sub_model(features, inner.outputs[0])
    x = cut_input
    if after_cut is not None:
        kwargs = {k: v for k, v in backbone_call.arguments.kwargs.items() if k == "training"}
        x = after_cut(x, **kwargs)
    after_backbone = _sub_model(backbone_call.output_tensors[0], outer.outputs[0])
    rest = keras.Model(cut_input, after_backbone(x) if after_backbone else x)

    frozen_layers = [x for node in nodes[: cut + 1] for x in _layers_of(node)]
    return FrozenPrefix(
        cut_name=nodes[cut].operation.name,
        prefix=prefix,
        rest=rest,
        frozen_layers=frozen_layers,
        inference_layers=[x.name for x in frozen_layers if _depends_on_training(x)],
        fingerprint=fingerprint([w for layer in frozen_layers for w in layer.weights]),
    )


def check_plan(plan: FrozenPrefix, model: keras.Model, probe: np.ndarray) -> None:
    """Check once, eagerly and in inference mode, that rest(prefix(x)) equals model(x) bit for bit.

    Raises:
        CutError: The outputs differ (the message gives the largest difference).
    """
    expected = keras.ops.convert_to_numpy(model(probe, training=False))
    features = plan.prefix(probe, training=False)
    actual = keras.ops.convert_to_numpy(plan.rest(features, training=False))
    if expected.shape != actual.shape or not np.array_equal(expected, actual):
        difference = (
            float(np.max(np.abs(expected.astype("float64") - actual)))
            if expected.shape == actual.shape
            else "shapes differ"
        )
        raise CutError(
            f"the model cut after {plan.cut_name!r} does not reproduce the full forward on a "
            f"probe batch (largest difference {difference}); use the model without the cache"
        )


# model -> {(backbone, groups, num_frozen): plan}. Every cache of one model (validation, test,
# training data) shares the plan of a cut, and with it the prefix and rest models whose traced
# functions are the costly part of a refresh.
_PLANS: weakref.WeakKeyDictionary[keras.Model, dict[tuple[Any, ...], FrozenPrefix | None]] = (
    weakref.WeakKeyDictionary()
)


def shared_plan(
    model: keras.Model,
    backbone: keras.layers.Layer,
    groups: Sequence[Sequence[keras.layers.Layer]],
    num_frozen: int,
    probe: np.ndarray,
) -> FrozenPrefix | None:
    """:func:`plan_cut`, made once per model and cut; the first plan of a model is checked
    with :func:`check_plan` on ``probe`` (later cuts come from the same graph surgery).

    Raises:
        CutError: See :func:`plan_cut` and :func:`check_plan`.
    """
    plans = _PLANS.setdefault(model, {})
    key = (id(backbone), tuple(tuple(id(layer) for layer in group) for group in groups), num_frozen)
    if key not in plans:
        plan = plan_cut(model, backbone, groups, num_frozen)
        if plan is not None and not any(plans.values()):
            check_plan(plan, model, probe)
        plans[key] = plan
    return plans[key]

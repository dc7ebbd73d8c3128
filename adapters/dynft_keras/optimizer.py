"""Replacing the compiled optimizer when the trainable set or the learning rate changes.

Keras 3 builds an optimizer for a fixed list of variables, and the compiled
train function captures that list. After ``trainable`` flags change, the
optimizer is therefore replaced by a fresh one of the same class and
configuration, built for the new trainable set, and the train/test/predict
functions are rebuilt; ``fit`` looks them up again at every step, so the
change takes effect inside the running ``fit`` on every backend.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="dynft")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule multiplied by a constant and shifted in steps.

    ``lr(step) = factor * schedule(step + step_offset)``. At an unfreeze the
    fresh optimizer starts counting steps from 0 again; the offset makes the
    user's schedule continue from where it was instead of restarting.

    Args:
        schedule: The user's schedule.
        factor: Multiplier applied to its output. Defaults to 1.0.
        step_offset: Steps already taken before the current optimizer. Defaults to 0.
    """

    def __init__(
        self,
        schedule: keras.optimizers.schedules.LearningRateSchedule,
        factor: float = 1.0,
        step_offset: int = 0,
    ) -> None:
        self.schedule = schedule
        self.factor = float(factor)
        self.step_offset = int(step_offset)

    def __call__(self, step: Any) -> Any:
        return self.factor * self.schedule(step + self.step_offset)

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "factor": self.factor,
            "step_offset": self.step_offset,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledSchedule:
        config = dict(config)
        config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


def configured_learning_rate(optimizer: keras.optimizers.Optimizer) -> LearningRate:
    """The optimizer's learning rate as configured: a float or a schedule object.

    Raises:
        TypeError: The learning rate is a plain callable, which cannot be scaled,
            or the optimizer is a ``LossScaleOptimizer``.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Its own config carries a dummy learning rate of 0; scaling that would
        # silently leave the wrapped optimizer's rate untouched.
        raise TypeError(
            "DynamicFineTuning does not support LossScaleOptimizer (mixed_float16 with "
            "auto_scale_loss); compile with auto_scale_loss=False or a float32 policy"
        )
    # get_config() would serialize a plain callable as a dict, like a schedule;
    # the attribute tells them apart.
    value = optimizer._learning_rate
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if isinstance(value, keras.Variable):
        return float(keras.ops.convert_to_numpy(value))
    raise TypeError(
        f"DynamicFineTuning needs an optimizer whose learning_rate is a number or a "
        f"keras.optimizers.schedules.LearningRateSchedule; {type(optimizer).__name__} "
        f"has learning_rate={value!r}"
    )


def scaled_learning_rate(optimizer: keras.optimizers.Optimizer, factor: float) -> LearningRate:
    """The learning rate a replacement optimizer should get, ``factor`` times the current one.

    A float is multiplied directly. A schedule ``s`` becomes
    ``ScaledSchedule(s, factor, steps_taken)`` (factors and offsets of an
    existing :class:`ScaledSchedule` accumulate), so it keeps its shape and
    continues from the current step.

    Args:
        optimizer: The optimizer being replaced (its step count is read).
        factor: The multiplier, e.g. ``Decision.lr_factor``.
    """
    current = configured_learning_rate(optimizer)
    if isinstance(current, float):
        return current * factor
    # The schedule is called with the raw step counter, which differs from
    # ``iterations`` under gradient accumulation.
    steps = int(keras.ops.convert_to_numpy(optimizer._iterations))
    if isinstance(current, ScaledSchedule):
        return ScaledSchedule(
            current.schedule, current.factor * factor, current.step_offset + steps
        )
    return ScaledSchedule(current, factor, steps)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the next step would use, as a Python float."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def serialize_learning_rate(learning_rate: LearningRate) -> Any:
    """JSON-plain form of a float or schedule learning rate."""
    if isinstance(learning_rate, float):
        return learning_rate
    return keras.optimizers.schedules.serialize(learning_rate)


def deserialize_learning_rate(data: Any) -> LearningRate:
    """Inverse of :func:`serialize_learning_rate`."""
    if isinstance(data, dict):
        return keras.optimizers.schedules.deserialize(data)
    return float(data)


def replace_optimizer(
    model: keras.Model, learning_rate: LearningRate
) -> keras.optimizers.Optimizer:
    """Give ``model`` a fresh optimizer for its current trainable set and rebuild its functions.

    The new optimizer has the class and configuration of ``model.optimizer``
    with ``learning_rate`` swapped in; its slots (e.g. Adam moments) start at
    zero and its step counter at 0, as after a recompile. On TensorFlow it is
    created inside the model's distribution strategy scope.

    Args:
        model: A compiled model whose ``trainable`` flags were just changed.
        learning_rate: The new learning rate (see :func:`scaled_learning_rate`).

    Returns:
        The new optimizer, already assigned to ``model.optimizer``.
    """
    old = model.optimizer
    config = old.get_config()
    config["learning_rate"] = learning_rate
    # Under tf.distribute the slots must be mirrored like the variables they belong to.
    scope = (
        model.distribute_strategy.scope()
        if keras.backend.backend() == "tensorflow"
        else contextlib.nullcontext()
    )
    with scope:
        new = type(old).from_config(config)
        new.build(model.trainable_variables)
    model.optimizer = new
    compile_config = getattr(model, "_compile_config", None)
    if compile_config is not None:
        # Keeps get_compile_config() (used by model.save) describing the live optimizer.
        compile_config.config["optimizer"] = new
    rebuild_step_functions(model)
    return new


def rebuild_step_functions(model: keras.Model) -> None:
    """Force new train/test/predict functions so they capture the current variable lists."""
    model.make_train_function(force=True)
    model.make_test_function(force=True)
    model.make_predict_function(force=True)

"""Learning rates: reading the compiled one, saving it, and the rate each group follows."""

from __future__ import annotations

from typing import Any

import keras

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


def configured_learning_rate(optimizer: keras.optimizers.Optimizer) -> LearningRate:
    """The optimizer's learning rate as configured: a float or a schedule object.

    Raises:
        TypeError: The learning rate is a plain callable, which cannot be scaled.
    """
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


def serialize_learning_rate(learning_rate: LearningRate | None) -> Any:
    """JSON-plain form of a float or schedule learning rate (``None``: not known yet)."""
    if learning_rate is None or isinstance(learning_rate, float):
        return learning_rate
    return keras.optimizers.schedules.serialize(learning_rate)


def deserialize_learning_rate(data: Any) -> LearningRate | None:
    """Inverse of ``serialize_learning_rate``.

    Raises:
        ValueError: ``data`` is neither ``None``, a positive finite number nor a serialized
            schedule.
    """
    if data is None:
        return None
    if isinstance(data, dict):
        try:
            schedule = keras.optimizers.schedules.deserialize(data)
        except Exception as err:  # Keras raises several types for a bad config
            raise ValueError(f"learning_rate {data!r} is no serialized schedule: {err}") from None
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(f"learning_rate {data!r} is not a LearningRateSchedule")
        return schedule
    if isinstance(data, bool) or not isinstance(data, (int, float)) or not 0 < data < float("inf"):
        raise ValueError(f"learning_rate must be a finite number > 0 or a schedule, got {data!r}")
    return float(data)


@keras.saving.register_keras_serializable(package="dynft")
class GroupRate(keras.optimizers.schedules.LearningRateSchedule):
    """The rate of one optimizer inside a [`FineTuningOptimizer`][dynft_keras.FineTuningOptimizer].

    ``rate = ratio x factor x base``: ``base`` is the rate the user and the learning-rate
    callbacks set on ``model.optimizer`` (a float or a schedule evaluated at its step count),
    ``factor`` is the cumulative decay of the unfreezes and ``ratio`` the group's
    ``unfrozen_lr_ratio`` (1 for the head). The step argument Keras passes is ignored: every
    group follows the step count of ``model.optimizer``, so a schedule stays on one clock.

    Args:
        owner: The `FineTuningOptimizer` whose base rate and factor are followed, or ``None``
            for a constant rate (what a saved config reloads as).
        ratio: Multiplier of this group. Defaults to 1.
        learning_rate: The constant rate used when ``owner`` is ``None``.
    """

    def __init__(self, owner: Any = None, ratio: float = 1.0, learning_rate: float = 0.0) -> None:
        self.owner = owner
        self.ratio = float(ratio)
        self.learning_rate = float(learning_rate)

    def __call__(self, step: Any) -> Any:
        if self.owner is None:
            return keras.ops.convert_to_tensor(self.learning_rate, dtype=keras.backend.floatx())
        return self.ratio * self.owner.effective_learning_rate_tensor()

    def get_config(self) -> dict[str, Any]:
        # A config carries numbers only: the rate now, frozen (a reload has no owner to follow).
        current = self(0)
        return {"ratio": self.ratio, "learning_rate": float(keras.ops.convert_to_numpy(current))}

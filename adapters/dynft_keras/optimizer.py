"""The optimizer DynamicFineTuning gives the model: one optimizer per set of unfrozen variables.

Keras 3 builds an optimizer for a fixed list of variables and keeps one step count for all of
them; it has no parameter groups. Rebuilding it at an unfreeze would drop its state (moments,
``iterations``, EMA averages, accumulated gradients) and any setting outside ``get_config()``;
extending it would start the new variables' moments at a step count that is not theirs (Adam's
bias correction would then make their first updates about 3x too large). Instead, the compiled
optimizer's class and configuration become a template:

* the head gets one instance, built once at train begin and never rebuilt;
* every unfreeze adds one more instance for the newly unfrozen variables, with its own state
  and step count, as a fresh optimizer on those variables would have.

Each instance runs the user's own update rule, so any Keras optimizer works exactly, at a
learning rate of ``ratio x factor x base`` ([`GroupRate`][dynft_keras.GroupRate]).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from .rates import GroupRate, LearningRate, configured_learning_rate
from .template import Template


def strategy_scope(model: keras.Model) -> contextlib.AbstractContextManager[Any]:
    """The model's tf.distribute scope on TensorFlow (slots are then mirrored), else nothing."""
    if keras.backend.backend() == "tensorflow":
        return model.distribute_strategy.scope()  # type: ignore[no-any-return]
    return contextlib.nullcontext()


class FineTuningOptimizer(keras.optimizers.Optimizer):
    """``model.optimizer`` during and after a DynamicFineTuning run.

    Built by [`wrap`][dynft_keras.FineTuningOptimizer.wrap] from the compiled optimizer, whose
    class and configuration (and weight-decay exclusions) it copies into one optimizer for the
    head and one more per unfreeze; it dispatches each gradient to the optimizer that owns the
    variable.

    The head trains at ``base x factor``, a group unfrozen with ``unfrozen_lr_ratio=r`` at
    ``r x base x factor``: ``base`` is the compiled rate (a float or a schedule of the step
    count), ``factor`` the cumulative ``(1 - decay)`` of the unfreezes. ``learning_rate`` is the
    head's rate, ``base x factor``, as for a single optimizer whose rate is multiplied at each
    unfreeze: ``ReduceLROnPlateau`` and ``TensorBoard`` read it, and setting it to ``v`` makes
    the head's rate ``v`` (the base becomes ``v / factor``; every group follows).
    ``iterations`` counts the training steps (a schedule's clock).

    Args:
        template: ``(class, config, weight-decay exclusions)`` of the compiled optimizer.
        learning_rate: The base rate, a float or a schedule.
        steps: Training steps already taken (a schedule continues from there). Defaults to 0.
        name: Name of this optimizer. Defaults to an automatic one.
    """

    def __init__(
        self,
        template: Template,
        learning_rate: LearningRate,
        steps: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            loss_scale_factor=template.config.get("loss_scale_factor"),
            name=name,
        )
        self._template = template
        self._clip_globally = template.config.get("global_clipnorm")
        self._factor = self.add_variable((), initializer="ones", name="lr_factor",
                                         aggregation="only_first_replica")  # fmt: skip
        self._iterations.assign(steps)
        self._head = self._instance(1.0, template.config.get("name"))
        self._groups: list[keras.optimizers.Optimizer] = []
        self._group_keys: list[frozenset[Any]] = []

    @classmethod
    def wrap(
        cls,
        optimizer: keras.optimizers.Optimizer,
        learning_rate: LearningRate | None = None,
        steps: int | None = None,
    ) -> FineTuningOptimizer:
        """A fresh `FineTuningOptimizer` with ``optimizer``'s class, settings and rate.

        A `FineTuningOptimizer` (left by an earlier run) is unwrapped to its template. Its
        learning rate and step count carry over (a schedule continues) unless given; slots
        start empty, as after ``model.compile``.

        Args:
            optimizer: The compiled optimizer.
            learning_rate: The base rate to use instead of ``optimizer``'s (a resume).
            steps: The step count to start from instead of ``optimizer``'s (a resume).

        Raises:
            TypeError: The optimizer cannot be split per group exactly (``LossScaleOptimizer``,
                an optimizer of optimizers, ``global_clipnorm`` with gradient accumulation), its
                learning rate is a plain callable, or it has settings that ``get_config()``
                does not return (they would be lost in the groups' optimizers).
        """
        if learning_rate is None:
            learning_rate = configured_learning_rate(optimizer)
        unwrapped = isinstance(optimizer, FineTuningOptimizer)
        template = optimizer._template if unwrapped else Template.of(optimizer)
        if steps is None:
            steps = int(keras.ops.convert_to_numpy(optimizer._iterations))
        return cls(template, learning_rate, steps)

    # -- learning rate ---------------------------------------------------------------

    @property
    def rate_factor(self) -> float:
        """Cumulative decay of the unfreezes applied on top of the base rate."""
        return float(keras.ops.convert_to_numpy(self._factor))

    def scale_learning_rate(self, factor: float) -> None:
        """Multiply the rate of every group (the head's included) by ``factor``."""
        self._factor.assign(self._factor * factor)

    @property
    def learning_rate(self) -> Any:
        """The head's rate, ``base x factor``."""
        return self.effective_learning_rate_tensor()

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if isinstance(self._learning_rate, keras.Variable) and isinstance(value, (int, float)):
            value = float(value) / self.rate_factor
        # A schedule is not settable (Keras raises); a new schedule replaces the base.
        keras.optimizers.Optimizer.learning_rate.fset(self, value)

    def effective_learning_rate_tensor(self) -> Any:
        """``base x factor`` as a tensor, evaluated at the current step."""
        base = self._get_current_learning_rate()
        return keras.ops.cast(base, self._factor.dtype) * self._factor

    def learning_rates(self) -> dict[str, float]:
        """The rate each optimizer uses now: ``"head"``, ``"unfreeze 1"``, ``"unfreeze 2"``..."""
        effective = float(keras.ops.convert_to_numpy(self.effective_learning_rate_tensor()))
        rates = {"head": effective}
        for index, group in enumerate(self._groups, start=1):
            rates[f"unfreeze {index}"] = effective * group._learning_rate.ratio
        return rates

    # -- structure -------------------------------------------------------------------

    @property
    def head(self) -> keras.optimizers.Optimizer:
        """The optimizer of the variables trainable at train begin (the head)."""
        return self._head

    @property
    def group_optimizers(self) -> tuple[keras.optimizers.Optimizer, ...]:
        """One optimizer per unfreeze, in order."""
        return tuple(self._groups)

    def _owners(self) -> Iterator[keras.optimizers.Optimizer]:
        yield self._head
        yield from self._groups

    def _instance(self, ratio: float, name: str | None) -> keras.optimizers.Optimizer:
        return self._template.instantiate(GroupRate(self, ratio), bool(self._clip_globally), name)

    def build(self, var_list: Sequence[keras.Variable]) -> None:
        """Build the head's optimizer for ``var_list`` (the trainable variables at train begin)."""
        if not self._head.built:
            self._head.build(list(var_list))
        self._index(var_list)

    def add_group(
        self, variables: Sequence[keras.Variable], ratio: float, var_list: Sequence[keras.Variable]
    ) -> None:
        """Give newly trainable ``variables`` their own optimizer at ``ratio`` x the head's rate.

        Args:
            variables: The variables of the newly unfrozen groups.
            ratio: ``unfrozen_lr_ratio``.
            var_list: Every trainable variable of the model now.
        """
        group = self._instance(ratio, f"{self._head.name}_unfreeze_{len(self._groups) + 1}")
        group.build(list(variables))
        self._align_phase(group)
        self._groups.append(group)
        self._group_keys.append(frozenset(self._var_key(v) for v in variables))
        self._index(var_list)
        _sync_averages(group)

    def _index(self, var_list: Sequence[keras.Variable]) -> None:
        known = {self._var_key(v) for v in self._head._trainable_variables}
        for keys in self._group_keys:
            known |= keys
        unknown = [v.path for v in var_list if self._var_key(v) not in known]
        if unknown:
            raise RuntimeError(
                f"variables {unknown} became trainable outside DynamicFineTuning; change "
                "trainable flags before fit (the head) or let the callback unfreeze the backbone"
            )
        keras.optimizers.Optimizer.build(self, list(var_list))

    def _owner_of(self, variable: keras.Variable) -> keras.optimizers.Optimizer:
        key = self._var_key(variable)
        for group, keys in zip(self._groups, self._group_keys, strict=True):
            if key in keys:
                return group
        return self._head

    def _align_phase(self, group: keras.optimizers.Optimizer) -> None:
        # Gradient accumulation and EMA overwrites fire when a step count reaches a multiple of
        # their period; starting the new optimizer in phase with the head keeps them in step,
        # while its count stays small enough for Adam's bias correction to see a fresh start.
        period = (group.gradient_accumulation_steps or 1) * (group.ema_overwrite_frequency or 1)
        if period > 1:
            head_steps = int(keras.ops.convert_to_numpy(self._head._iterations))
            group._iterations.assign(head_steps % period)

    # -- the Keras optimizer interface -----------------------------------------------

    @property
    def variables(self) -> list[keras.Variable]:
        variables = self._variables[:]
        for owner in self._owners():
            variables.extend(owner.variables)
        return variables

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None) -> None:
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        grads = list(grads)
        if self._clip_globally:
            # The instances were built without global_clipnorm: the norm spans all of them.
            if self.loss_scale_factor is not None:
                grads = [g if g is None else g / self.loss_scale_factor for g in grads]
            grads = _clip_by_global_norm(grads, self._clip_globally)
        dispatched: dict[int, tuple[keras.optimizers.Optimizer, list[Any], list[Any]]] = {}
        for grad, variable in zip(grads, trainable_variables, strict=True):
            owner = self._owner_of(variable)
            entry = dispatched.setdefault(id(owner), (owner, [], []))
            entry[1].append(grad)
            entry[2].append(variable)
        for owner, owner_grads, owner_vars in dispatched.values():
            # A group whose gradients are all None (it does not reach the loss) is skipped,
            # as a single optimizer would skip those variables.
            if any(g is not None for g in owner_grads):
                owner.apply(owner_grads, owner_vars)
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list: Sequence[keras.Variable]) -> None:
        by_owner: dict[int, tuple[keras.optimizers.Optimizer, list[keras.Variable]]] = {}
        for variable in var_list:
            owner = self._owner_of(variable)
            by_owner.setdefault(id(owner), (owner, []))[1].append(variable)
        for owner, variables in by_owner.values():
            owner.finalize_variable_values(variables)

    def save_own_variables(self, store: Any) -> None:
        # The head's and the groups' optimizers are saved as children of this one.
        for index, variable in enumerate(self._variables):
            store[str(index)] = keras.ops.convert_to_numpy(variable)

    def load_own_variables(self, store: Any) -> None:
        if len(store.keys()) != len(self._variables):
            raise ValueError(
                f"saved FineTuningOptimizer state has {len(store.keys())} variables, this one "
                f"{len(self._variables)}"
            )
        for index, variable in enumerate(self._variables):
            variable.assign(store[str(index)])

    # -- after a rollback ------------------------------------------------------------

    def sync_moving_averages(self) -> None:
        """Set every EMA average to its variable's value (after a restore)."""
        for owner in self._owners():
            _sync_averages(owner)

    def reset_state(self) -> None:
        """Start every optimizer afresh on its variables (moments zero, own step count 0).

        The step count of ``model.optimizer`` itself, a schedule's clock, keeps running.
        """
        for owner in self._owners():
            fresh = self._template.instantiate(owner._learning_rate, bool(self._clip_globally))
            fresh.build(list(owner._trainable_variables))
            for variable, initial in zip(owner.variables, fresh.variables, strict=True):
                # A host copy: on JAX two variables sharing one buffer break the donated step.
                variable.assign(keras.ops.convert_to_numpy(initial))
            self._align_phase(owner)
        self.sync_moving_averages()

    def get_config(self) -> dict[str, Any]:
        # The per-group structure is run state, rebuilt by the callback: a config holds the
        # template and the base rate, like the compiled optimizer's own.
        template = self._template.instantiate(configured_learning_rate(self))
        return {"template": keras.saving.serialize_keras_object(template)}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> FineTuningOptimizer:
        template = keras.saving.deserialize_keras_object(
            config["template"], custom_objects=custom_objects
        )
        return cls.wrap(template)


def _sync_averages(optimizer: keras.optimizers.Optimizer) -> None:
    # An average left on the abandoned trajectory would pull the restored weights back to it
    # (at an EMA overwrite and at the end of fit).
    if optimizer.use_ema and optimizer.built:
        for variable, average in zip(
            optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True
        ):
            if average is not None:
                # A copy: on JAX an average sharing its variable's buffer breaks the donated
                # train step ("donate the same buffer twice").
                average.assign(keras.ops.copy(variable.value))


def _clip_by_global_norm(grads: list[Any], clip_norm: float) -> list[Any]:
    present = [g for g in grads if g is not None]
    norm = keras.ops.sqrt(sum(keras.ops.sum(keras.ops.square(g)) for g in present))
    # As Keras does: scale = clip / max(norm, clip), NaN when the norm is not finite.
    scale = clip_norm * keras.ops.minimum(1.0 / norm, 1.0 / clip_norm)
    scale = scale + (norm - norm)
    return [g if g is None else g * keras.ops.cast(scale, g.dtype) for g in grads]


def rebuild_step_functions(model: keras.Model) -> None:
    """Force new train/test/predict functions so they capture the current variable lists."""
    model.make_train_function(force=True)
    model.make_test_function(force=True)
    model.make_predict_function(force=True)

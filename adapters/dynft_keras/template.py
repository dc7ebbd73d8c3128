"""The compiled optimizer as a template: checked once, copied for the head and every unfreeze."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

# Public attributes that name an optimizer instance rather than a setting.
_NOT_SETTINGS = frozenset({"built", "name"})


def _settings(optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(optimizer).items()
        if not key.startswith("_")
        and key not in _NOT_SETTINGS
        and (value is None or isinstance(value, (bool, int, float, str, tuple)))
    }


def _check_supported(optimizer: keras.optimizers.Optimizer) -> None:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Its own config carries a dummy learning rate of 0; scaling that would
        # silently leave the wrapped optimizer's rate untouched.
        raise TypeError(
            "DynamicFineTuning does not support LossScaleOptimizer (mixed_float16 with "
            "auto_scale_loss); compile with auto_scale_loss=False or a float32 policy"
        )
    if hasattr(optimizer, "optimizers"):
        raise TypeError(
            f"DynamicFineTuning does not support {type(optimizer).__name__}, which holds "
            "several optimizers; compile with one optimizer (unfrozen_lr_ratio gives the "
            "backbone its own rate)"
        )
    if optimizer.global_clipnorm and optimizer.gradient_accumulation_steps:
        raise TypeError(
            "DynamicFineTuning cannot combine global_clipnorm with gradient_accumulation_steps: "
            "the global norm of accumulated gradients spans the optimizers of all groups; use "
            "clipnorm (per variable) or drop the accumulation"
        )


@dataclass(frozen=True)
class Template:
    """Class, ``get_config()`` and weight-decay exclusions of the compiled optimizer.

    Attributes:
        optimizer_class: The compiled optimizer's class.
        config: Its ``get_config()``.
        excluded: Keys of the variables excluded from weight decay
            (``exclude_from_weight_decay(var_list=...)``), which ``get_config()`` omits.
        pattern: The compiled name pattern of ``exclude_from_weight_decay(var_names=...)``.
    """

    optimizer_class: type
    config: dict[str, Any]
    excluded: frozenset[Any]
    pattern: Any

    @classmethod
    def of(cls, optimizer: keras.optimizers.Optimizer) -> Template:
        """The template of ``optimizer``.

        Raises:
            TypeError: The optimizer cannot be split per group exactly (``LossScaleOptimizer``,
                an optimizer of optimizers, ``global_clipnorm`` with gradient accumulation), or
                it has settings that ``get_config()`` does not return (a copy would lose them).
        """
        _check_supported(optimizer)
        template = cls(
            type(optimizer),
            optimizer.get_config(),
            frozenset(getattr(optimizer, "_exclude_from_weight_decay", set())),
            getattr(optimizer, "_exclude_from_weight_decay_pattern", None),
        )
        copied = _settings(template.instantiate(0.0))
        lost = {
            key: value
            for key, value in _settings(optimizer).items()
            if key not in copied or copied[key] != value
        }
        if lost:
            raise TypeError(
                f"{type(optimizer).__name__} has settings that get_config() does not return "
                f"({lost}); DynamicFineTuning copies the optimizer per unfrozen group from its "
                "config and would lose them. Add them to get_config()"
            )
        return template

    def instantiate(
        self, learning_rate: Any, clip_globally: bool = False, name: str | None = None
    ) -> keras.optimizers.Optimizer:
        """A fresh optimizer of this class and configuration at ``learning_rate``.

        Args:
            learning_rate: Its rate (a float or a schedule).
            clip_globally: Leave the global clipping (and the loss-scale unscaling before it)
                to the caller, which spans several optimizers.
            name: Its name instead of the template's.

        Raises:
            TypeError: ``from_config`` fails on the template's own config.
        """
        config = {**self.config, "learning_rate": learning_rate}
        if name is not None:
            config["name"] = name
        if clip_globally:
            config.update(global_clipnorm=None, loss_scale_factor=None)
        try:
            optimizer = self.optimizer_class.from_config(config)
        except Exception as err:  # a custom optimizer's from_config may raise anything
            raise TypeError(
                f"cannot copy {self.optimizer_class.__name__} from its get_config() for the "
                f"unfrozen groups: {err}"
            ) from err
        optimizer._exclude_from_weight_decay = set(self.excluded)
        optimizer._exclude_from_weight_decay_pattern = self.pattern
        optimizer._exclude_from_weight_decay_cache = {}
        return optimizer

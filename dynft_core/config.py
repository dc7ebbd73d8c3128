"""The one validated set of options every adapter takes (``patience=5, step=3, ...``)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .plateau import check_min_delta, resolve_mode
from .scheduler import UnfreezeScheduler, check_bool, check_decay, check_int


@dataclass(frozen=True)
class FineTuneConfig:
    """Options of a dynamic fine-tuning run, checked once, shared by every adapter.

    Every adapter (``dynft_keras.DynamicFineTuning``, ``dynft_torch.DynamicFineTuner``, the
    Lightning and Hugging Face callbacks) takes these as keyword arguments or as
    ``config=FineTuneConfig(...)``.

    Args:
        patience: Epochs (validations) without improvement before an unfreeze or the stop,
            ``p``. Defaults to 5.
        step: Groups unfrozen at a time, ``k``. Defaults to 3.
        decay: Learning-rate decay per unfreeze, ``0 <= decay < 1``. Defaults to 0.1.
        max_epochs: Epoch budget ``n``. ``None`` (the default) takes the framework's budget
            (``fit(epochs=...)``, ``Trainer(max_epochs=...)``); a plain loop has none and ends
            the run with ``finish()``.
        min_delta: Minimum change counted as an improvement (>= 0). Defaults to 0.
        monitor: Name of the monitored value. Defaults to ``"val_loss"``.
        mode: ``"auto"`` (default: from the monitor's name, ``*loss`` -> min, ``*accuracy``,
            ``*auc``, ``*f1`` ... -> max), ``"min"`` or ``"max"``.
        unfrozen_lr_ratio: Learning rate of unfrozen backbone groups relative to the head's
            (Lightning's ``backbone_initial_ratio_lr``; > 0). ``1.0`` (the default) is
            Algorithm 1: one rate for everything. Each unfrozen group then decays with the head.
        restore_best_weights: End on the best-validation weights however training ends
            (default ``True``); ``False`` keeps the last weights at the end.
        train_batchnorm: Let unfrozen BatchNorm layers train (batch statistics and affine
            parameters). ``False`` (the default, the paper's rule) keeps every backbone
            BatchNorm in inference mode with frozen parameters for the whole run.

    Raises:
        ValueError: An option is out of range (the message names it and what is allowed).
    """

    patience: int = 5
    step: int = 3
    decay: float = 0.1
    max_epochs: int | None = None
    min_delta: float = 0.0
    monitor: str = "val_loss"
    mode: str = "auto"
    unfrozen_lr_ratio: float = 1.0
    restore_best_weights: bool = True
    train_batchnorm: bool = False

    def __post_init__(self) -> None:
        check = {
            "patience": check_int("patience", self.patience, 1),
            "step": check_int("step", self.step, 1),
            "decay": check_decay(self.decay),
            "max_epochs": None
            if self.max_epochs is None
            else check_int("max_epochs", self.max_epochs, 1),
            "min_delta": check_min_delta(self.min_delta),
            "unfrozen_lr_ratio": _check_ratio(self.unfrozen_lr_ratio),
            "restore_best_weights": check_bool("restore_best_weights", self.restore_best_weights),
            "train_batchnorm": check_bool("train_batchnorm", self.train_batchnorm),
        }
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"monitor must be a non-empty string, got {self.monitor!r}")
        resolve_mode(self.mode, self.monitor)
        for name, value in check.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_options(cls, config: FineTuneConfig | None = None, **options: Any) -> FineTuneConfig:
        """``config`` (or the defaults) with ``options`` replacing its fields.

        Raises:
            TypeError: An option is not a field (the message lists the fields).
            ValueError: A value is out of range.
        """
        if config is not None and not isinstance(config, FineTuneConfig):
            raise TypeError(f"config must be a FineTuneConfig, got {type(config).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"unknown fine-tuning option(s) {unknown}; the options are {known}")
        return dataclasses.replace(config or cls(), **options)

    @property
    def direction(self) -> str:
        """``"min"`` or ``"max"``: ``mode`` with ``"auto"`` resolved from ``monitor``."""
        return resolve_mode(self.mode, self.monitor)

    def budget(self, framework_epochs: int | None, unit: str = "epochs") -> int | None:
        """The scheduler's epoch budget given the framework's (``None``: it has none).

        ``max_epochs=None`` takes the framework's budget. A ``max_epochs`` larger than the
        framework's cannot be reached: the run will end at the framework's budget (with the best
        weights restored by ``finish``), so this warns once, naming both numbers.
        """
        if self.max_epochs is None:
            return framework_epochs
        if framework_epochs is not None and self.max_epochs > framework_epochs:
            warnings.warn(
                f"max_epochs={self.max_epochs} but the framework stops after {framework_epochs} "
                f"{unit}: the run ends there, on the best weights so far (pass max_epochs=None "
                "to use the framework's budget)",
                UserWarning,
                stacklevel=3,
            )
        return self.max_epochs

    def scheduler(self, num_groups: int, max_epochs: int | None) -> UnfreezeScheduler:
        """A fresh [`UnfreezeScheduler`][dynft_core.UnfreezeScheduler] for ``num_groups`` groups."""
        return UnfreezeScheduler(
            num_groups,
            patience=self.patience,
            step=self.step,
            decay=self.decay,
            max_epochs=max_epochs,
            min_delta=self.min_delta,
            mode=self.direction,
            restore_best_weights=self.restore_best_weights,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain form."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FineTuneConfig:
        """Inverse of [`to_dict()`][dynft_core.FineTuneConfig.to_dict].

        Raises:
            TypeError / ValueError: An unknown or invalid field.
        """
        return cls.from_options(None, **dict(data))


def _check_ratio(ratio: object) -> float:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or not math.isfinite(float(ratio))
        or float(ratio) <= 0
    ):
        raise ValueError(f"unfrozen_lr_ratio must be a finite number > 0, got {ratio!r}")
    return float(ratio)

"""What the Lightning callback checks about the Trainer before it changes anything.

Each check turns a set-up in which dynft would silently do nothing, or the wrong thing, into one
error at fit start: a strategy that shards or wraps the parameters so that they cannot be frozen
group by group, a fit without validation (dynft decides on validation values only), a validation
cadence other than once per epoch (patience then counts validations; said once in the log).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)
from lightning.pytorch.strategies.xla import XLAStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

_SHARDED = (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy)


def check_strategy(strategy: object) -> None:
    """Refuse strategies dynft cannot freeze and unfreeze under.

    Raises:
        TypeError: DeepSpeed, FSDP or ModelParallel (parameters are sharded or flattened, so
            groups cannot be frozen one by one, and a frozen parameter's optimizer state lives in
            the engine), XLA (not tested) or a strategy that is neither a single-device nor a
            DDP strategy.
        ValueError: DDP with ``static_graph=True``, which assumes the set of trained parameters
            never changes.
    """
    name = type(strategy).__name__
    if isinstance(strategy, _SHARDED):
        raise TypeError(
            f"DynamicFineTuning does not support {name}: it shards or flattens the parameters, "
            "so backbone groups cannot be frozen and unfrozen one by one. Use strategy='ddp' "
            "(the callback re-wraps the model after every unfreeze) or a single device"
        )
    if isinstance(strategy, XLAStrategy) or not isinstance(
        strategy, (SingleDeviceStrategy, DDPStrategy)
    ):
        raise TypeError(
            f"DynamicFineTuning supports SingleDeviceStrategy and DDPStrategy (and their "
            f"subclasses), got {name}"
        )
    if isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs.get("static_graph"):
        raise ValueError(
            "DDPStrategy(static_graph=True) cannot follow unfreezing (the set of parameters that "
            "receive gradients changes); drop static_graph"
        )


def check_validation_runs(trainer: pl.Trainer, monitor: str) -> None:
    """Refuse a fit in which no validation would run (dynft would never decide anything).

    Raises:
        ValueError: No val dataloader, no ``validation_step``, ``limit_val_batches=0``, or a
            ``check_val_every_n_epoch`` beyond ``max_epochs``.
    """
    cause = None
    module = trainer.lightning_module
    if not trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined():
        cause = "no val dataloader was given (trainer.fit(model, train_loader, val_loader))"
    elif not is_overridden("validation_step", module):
        cause = f"{type(module).__name__} defines no validation_step"
    elif trainer.limit_val_batches == 0:
        cause = "limit_val_batches=0"
    else:
        every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
        if every is not None and epochs is not None and 0 <= epochs < every:
            cause = f"check_val_every_n_epoch={every} is beyond max_epochs={epochs}"
    if cause is not None:
        raise ValueError(
            f"DynamicFineTuning decides on the validation value {monitor!r}, but this fit runs "
            f"no validation: {cause}. The backbone would stay frozen for the whole run. Give "
            "the fit a validation loop that logs the monitored value"
        )


def check_validation_batches(trainer: pl.Trainer) -> None:
    """Refuse a val dataloader without batches (known once the loaders are set up).

    Raises:
        ValueError: The val dataloaders hold no batch.
    """
    batches = trainer.num_val_batches
    total = sum(batches) if isinstance(batches, list) else batches
    if batches and total == 0:
        raise ValueError(
            "DynamicFineTuning decides on validation values, but the val dataloader has no "
            "batch: no validation would run and the backbone would stay frozen"
        )


def validation_cadence(trainer: pl.Trainer) -> tuple[int | None, str | None]:
    """How many validations the Trainer's budget holds, and what patience counts.

    Returns:
        ``(validations, note)``. ``validations`` is the scheduler's budget: ``max_epochs`` when
        every epoch ends with a validation, ``max_epochs // N`` with ``check_val_every_n_epoch=N``,
        ``None`` when the Trainer has no epoch budget (``max_epochs=-1``) or validates by batch
        count or time (their number per epoch is not known at fit start). ``note`` (``None`` for
        one validation per epoch) says that ``patience`` and ``max_epochs`` count validations.
    """
    epochs = trainer.max_epochs
    budget = None if epochs is None or epochs < 0 else epochs
    every = trainer.check_val_every_n_epoch
    interval = trainer.val_check_interval
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        cadence = "validation runs by wall-clock time"
        budget = None
    elif every is None:
        cadence = f"validation runs every {interval} training batches"
        budget = None
    elif isinstance(interval, float) and math.isclose(interval, 1.0):
        if every == 1:
            return budget, None
        cadence = f"validation runs every {every} epochs"
        budget = None if budget is None else budget // every
    else:
        cadence = (
            f"validation runs every {interval} training batches"
            if isinstance(interval, int)
            else f"validation runs every {interval:g} of an epoch"
        )
        budget = None
    note = (
        f"DynamicFineTuning: {cadence}; patience and max_epochs count validations, and each "
        "validation takes one decision"
    )
    return budget, note

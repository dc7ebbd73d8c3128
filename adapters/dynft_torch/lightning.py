"""Lightning callback: ``Trainer(callbacks=[DynamicFineTuning(monitor="val_loss", ...)])``.

Hook order used (Lightning 2.x):

* ``setup``: freeze the backbone groups *before* the strategy wraps the model in DDP, so that the
  DDP reducer is built for the parameters that train at the start.
* ``load_state_dict`` (resume): mark the saved trainable groups trainable, still before DDP wraps.
* ``on_fit_start``: the optimizer exists; build the :class:`~dynft_torch.DynamicFineTuner`.
* ``on_validation_end``: remember the monitored value (sanity checks are ignored).
* ``on_train_epoch_end`` (runs after the epoch's validation): decide and apply; after an
  unfreeze under a DDP strategy, re-wrap the model so the reducer registers the newly trainable
  parameters (the reducer only knows parameters that required grad when it was built); on
  ``stop``, set ``trainer.should_stop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dynft_core import Decision, UnfreezeScheduler

from .freezing import backbone_batchnorms, batchnorm_parameter_names, freeze_parameter
from .groups import GroupSpec, resolve_groups
from .tuner import DynamicFineTuner


class DynamicFineTuning(pl.Callback):
    """Validation-driven dynamic fine-tuning for ``Trainer.fit``.

    Args:
        monitor: Key in ``trainer.callback_metrics`` logged during validation. Defaults to
            ``"val_loss"``.
        backbone: Submodule of the LightningModule (or its name) to freeze; ``None`` (default)
            means the whole module minus a recognised head.
        groups: ``"auto"`` (default), ``"modules"`` or an explicit list; see
            :class:`~dynft_torch.DynamicFineTuner`.
        patience: Epochs without improvement before an unfreeze or stop. Defaults to 5.
        step: Groups unfrozen per unfreeze. Defaults to 3.
        decay: Learning-rate decay per unfreeze. Defaults to 0.1.
        max_epochs: Epoch budget of the scheduler. Defaults to 100.
        min_delta: Minimum change counted as an improvement. Defaults to 0.
        mode: ``"min"`` (default) or ``"max"``.
        restore_optimizer: Roll the optimizer state back with the weights. Defaults to ``False``.
        optimizer_index: Which of ``trainer.optimizers`` to manage. Defaults to 0.

    Raises:
        ValueError: An invalid scheduler option (at construction).

    Attributes:
        tuner: The :class:`~dynft_torch.DynamicFineTuner` (``None`` before ``on_fit_start``).
        decisions: Every decision taken during ``fit``.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        backbone: nn.Module | str | None = None,
        groups: str | Sequence[GroupSpec] = "auto",
        patience: int = 5,
        step: int = 3,
        decay: float = 0.1,
        max_epochs: int = 100,
        min_delta: float = 0.0,
        mode: str = "min",
        restore_optimizer: bool = False,
        optimizer_index: int = 0,
    ) -> None:
        self.monitor = monitor
        self.backbone = backbone
        self.groups_spec = groups
        self.scheduler_options: dict[str, Any] = {
            "patience": patience,
            "step": step,
            "decay": decay,
            "max_epochs": max_epochs,
            "min_delta": min_delta,
            "mode": mode,
        }
        UnfreezeScheduler(1, **self.scheduler_options)  # reject bad options now, not at fit
        self.restore_optimizer = restore_optimizer
        self.optimizer_index = optimizer_index
        self.tuner: DynamicFineTuner | None = None
        self.decisions: list[Decision] = []
        self._parameters: dict[str, nn.Parameter] = {}
        self._batchnorm_parameters: set[str] = set()
        self._pending_state: dict[str, Any] | None = None
        self._latest_value: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        groups = resolve_groups(pl_module, self.backbone, self.groups_spec)
        self._parameters = dict(pl_module.named_parameters())
        self._batchnorm_parameters = batchnorm_parameter_names(
            backbone_batchnorms(pl_module, groups)
        )
        for group in groups:
            for name in group.parameter_names:
                freeze_parameter(self._parameters[name])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._pending_state = state_dict
        saved_groups = state_dict["group_parameter_names"]
        trainable = saved_groups[len(saved_groups) - state_dict["scheduler"]["num_unfrozen"] :]
        for names in trainable:
            for name in names:
                if name in self._parameters and name not in self._batchnorm_parameters:
                    self._parameters[name].requires_grad_(True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.optimizers:
            raise RuntimeError("DynamicFineTuning needs an optimizer from configure_optimizers()")
        if self.optimizer_index >= len(trainer.optimizers):
            raise ValueError(
                f"optimizer_index={self.optimizer_index} but configure_optimizers() returned "
                f"{len(trainer.optimizers)} optimizer(s)"
            )
        optimizer = trainer.optimizers[self.optimizer_index]
        schedulers = [
            config.scheduler
            for config in trainer.lr_scheduler_configs
            if config.scheduler.optimizer is optimizer
        ]
        self.tuner = DynamicFineTuner(
            pl_module,
            optimizer,
            backbone=self.backbone,
            groups=self.groups_spec,
            restore_optimizer=self.restore_optimizer,
            lr_scheduler=schedulers[0] if schedulers else None,
            **self.scheduler_options,
        )
        if self._pending_state is not None:
            self.tuner.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise RuntimeError(
                f"DynamicFineTuning monitors {self.monitor!r} but validation logged only "
                f"{sorted(trainer.callback_metrics)}; log it with self.log({self.monitor!r}, ...)"
            )
        self._latest_value = float(value)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tuner is None or self._latest_value is None or self.tuner.scheduler.stopped:
            return
        decision = self.tuner.step(self._latest_value)
        self._latest_value = None
        self.decisions.append(decision)
        if decision.newly_unfrozen:
            _rewrap_ddp(trainer)
        if decision.stop:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {} if self.tuner is None else self.tuner.state_dict()


def _rewrap_ddp(trainer: pl.Trainer) -> None:
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()

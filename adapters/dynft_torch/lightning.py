"""Lightning callback: ``Trainer(callbacks=[DynamicFineTuning(backbone="net.features")])``.

It drives a [`DynamicFineTuner`][dynft_torch.DynamicFineTuner] (as a
[`LightningTuner`][dynft_torch.lightning_tuner.LightningTuner], whose rollbacks wait for the next
training batch) from these hooks (Lightning 2.6):

* ``setup``: check the strategy and that the fit validates; freeze the backbone groups before the
  strategy wraps the model in DDP (the reducer is built for the parameters that train at the
  start) and before ``configure_optimizers`` (an optimizer over ``requires_grad`` parameters then
  holds the head, as with Lightning's ``BaseFinetuning``).
* ``on_load_checkpoint`` / ``load_state_dict`` (``fit(ckpt_path=...)``): check the saved state.
  It is applied in ``on_fit_start``, or at once under a strategy that restores the checkpoint
  after setup (the tuner exists then).
* ``on_fit_start``: the optimizers and schedulers exist: build the tuner with every scheduler of
  the managed optimizer and the Trainer's budget, apply a saved state (re-creating the param
  groups the run added) before Lightning loads the optimizer state into them.
* ``on_train_start``: the dataloaders exist: refuse an empty val dataloader, say once what
  ``patience`` counts when validation is not once per epoch.
* ``on_validation_end``: one decision per validation. Lightning runs every ``ModelCheckpoint``
  after all other callbacks, at the validation end or the train epoch end, so a checkpoint
  always holds the state after the decision. Under DDP the model is re-wrapped after an
  unfreeze.
* ``on_train_epoch_start`` / ``on_train_batch_start``: carry out a pending rollback; with
  ``train_batchnorm=True`` put the BatchNorm layers of unfrozen groups in training mode
  (Lightning keeps each submodule's mode, so nothing else would).
* ``on_train_end`` / ``on_fit_end``: however the fit ended (dynft's stop, ``max_epochs``,
  ``max_steps``, ``max_time``, ``EarlyStopping``), end on the best weights. ``on_exception``
  (an error, ``KeyboardInterrupt``): the same, except for Lightning's ``SIGTERMException``
  (a preemption, to be resumed from a checkpoint); before the first decision it undoes the
  freeze instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dynft_core import Decision, FineTuneConfig, ResumeMismatchError, check_resume_point
from dynft_core.scheduler import check_bool, check_int

from .freezing import freeze_parameter
from .group_specs import GroupSpec
from .groups import check_group_arguments, resolve_groups
from .lightning_checks import (
    check_strategy,
    check_validation_batches,
    check_validation_runs,
    validation_cadence,
)
from .lightning_io import AtomicCheckpointIO, warn_if_checkpoints_can_tear
from .lightning_state import (
    SavedState,
    callback_state,
    check_pending_restore,
    parse_state,
    with_budget,
)
from .lightning_tuner import LightningTuner
from .param_groups import ParamGroupFn, check_param_group_fn

__all__ = ["AtomicCheckpointIO", "DynamicFineTuning"]

log = logging.getLogger(__name__)


class DynamicFineTuning(pl.Callback):
    """Validation-driven dynamic fine-tuning (Algorithm 1) for ``Trainer.fit``.

    After every validation the monitored value goes to the tuner's
    [`UnfreezeScheduler`][dynft_core.UnfreezeScheduler]; its decision is carried out by
    [`carry_out`][dynft_core.carry_out]: snapshot, unfreeze (new param groups follow the
    optimizer's weight-decay split and stay on every scheduler's schedule), decay every rate,
    restore the best weights (before the next training batch, so checkpoints hold the weights
    each validation measured), stop the fit. However the fit ends, the model ends on the
    best-validation weights, unless ``restore_best_weights=False``.

    Args:
        backbone: Submodule of the LightningModule (or its name) to freeze; ``None`` (default)
            means the whole module minus a recognised head.
        groups: ``"auto"`` (default), ``"layers"``, ``"modules"`` or an explicit list; see
            [`resolve_groups`][dynft_torch.resolve_groups].
        config: A [`FineTuneConfig`][dynft_core.FineTuneConfig]; ``**options`` replace its
            fields.
        restore_optimizer: Roll the optimizer state back with the weights. Defaults to
            ``False`` (Algorithm 1); after a non-finite validation the state is reset instead.
        param_group_fn: ``(name, parameter) -> dict | None``, settings for parameters put in new
            param groups; see [`DynamicFineTuner`][dynft_torch.DynamicFineTuner].
        optimizer_index: Which of the optimizers returned by ``configure_optimizers`` to manage
            (with all of its LR schedulers). Defaults to 0.
        **options: [`FineTuneConfig`][dynft_core.FineTuneConfig] fields: ``monitor`` (a key
            logged during validation, default ``"val_loss"``), ``mode`` (``"auto"``),
            ``patience``, ``step``, ``decay``, ``max_epochs``, ``min_delta``,
            ``unfrozen_lr_ratio``, ``restore_best_weights``, ``train_batchnorm``.
            ``patience`` and ``max_epochs`` count validations. ``max_epochs=None`` (default)
            takes the Trainer's budget: its ``max_epochs`` (``// check_val_every_n_epoch``);
            none when validation runs by batch count or time, or ``max_epochs=-1``.

    Raises:
        TypeError: An unknown option, ``param_group_fn`` not callable, or a ``backbone`` that is
            neither a module nor a name.
        ValueError: An invalid option or ``groups``.

    Attributes:
        config: The validated options.
        tuner: The [`LightningTuner`][dynft_torch.lightning_tuner.LightningTuner] (``None``
            before ``on_fit_start``).
    """

    def __init__(
        self,
        backbone: nn.Module | str | None = None,
        groups: str | Sequence[GroupSpec] = "auto",
        config: FineTuneConfig | None = None,
        *,
        restore_optimizer: bool = False,
        param_group_fn: ParamGroupFn | None = None,
        optimizer_index: int = 0,
        **options: Any,
    ) -> None:
        self.config = FineTuneConfig.from_options(config, **options)
        self.restore_optimizer = check_bool("restore_optimizer", restore_optimizer)
        self.optimizer_index = check_int("optimizer_index", optimizer_index, 0)
        self.param_group_fn = check_param_group_fn(param_group_fn)
        check_group_arguments(backbone, groups)
        self.backbone = backbone
        self.groups_spec = groups
        self.tuner: LightningTuner | None = None
        self._used = False
        self._active = False
        self._trainer: pl.Trainer | None = None
        self._flags_before: list[tuple[nn.Parameter, bool]] = []
        self._modes_before: list[tuple[nn.Module, bool]] = []
        self._saved: SavedState | None = None
        self._source = "the Lightning checkpoint"
        self._resumed = False
        self._validations = 0
        self._cadence_note: str | None = None

    @property
    def decisions(self) -> list[Decision]:
        """Every decision of the run, the closing one included (empty before ``on_fit_start``)."""
        return [] if self.tuner is None else self.tuner.scheduler.history

    # -- fit start ----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        if self._used:
            raise RuntimeError(
                "this DynamicFineTuning was already used by a fit; create a new one for every "
                "fit. To continue a run, pass a new DynamicFineTuning and "
                "trainer.fit(..., ckpt_path=<a checkpoint of that run>)"
            )
        check_strategy(trainer.strategy)
        check_validation_runs(trainer, self.config.monitor)
        groups = resolve_groups(pl_module, self.backbone, self.groups_spec)
        parameters = dict(pl_module.named_parameters())
        self._flags_before = [(p, p.requires_grad) for p in parameters.values()]
        self._modes_before = [(m, m.training) for m in pl_module.modules()]
        for group in groups:
            for name in group.parameter_names:
                freeze_parameter(parameters[name])
        self._used = self._active = True
        self._trainer = trainer

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._source = f"the Lightning checkpoint {trainer.ckpt_path}"
        has_state = self.state_key in (checkpoint.get("callbacks") or {})
        if not has_state and checkpoint.get("global_step", 0) > 0:
            raise ResumeMismatchError(
                f"{self._source} (epoch {checkpoint.get('epoch')}, global step "
                f"{checkpoint['global_step']}) holds no DynamicFineTuning state: it was written "
                "by a fit without this callback, so dynft would start over in mid-run with the "
                "backbone frozen. Resume it without DynamicFineTuning, or start a new run from "
                "its weights (LightningModule.load_from_checkpoint) without ckpt_path"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            saved = parse_state(state_dict)
        except ValueError as err:
            raise ValueError(f"{self._source}: {err}") from None
        if saved.stopped:
            raise RuntimeError(
                f"{self._source} holds a dynft run that already ended after "
                f"{saved.decisions()} validations; a resumed fit would train on without dynft. "
                "Start a new run from its weights (LightningModule.load_from_checkpoint) with a "
                "new DynamicFineTuning and no ckpt_path"
            )
        self._saved = saved
        if self.tuner is not None:  # the strategy restores the checkpoint after on_fit_start
            self._apply_saved_state()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        if not optimizers:
            raise ValueError(
                "DynamicFineTuning needs an optimizer, and configure_optimizers() returned none"
            )
        if self.optimizer_index >= len(optimizers):
            raise ValueError(
                f"optimizer_index={self.optimizer_index} but configure_optimizers() returned "
                f"{len(optimizers)} optimizer(s)"
            )
        optimizer = optimizers[self.optimizer_index]
        lr_schedulers = [
            c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer
        ]
        validations, self._cadence_note = validation_cadence(trainer)
        unit = "epochs" if self._cadence_note is None else "validations"
        budget = self.config.budget(validations, unit)
        self.tuner = LightningTuner(
            self._stop_fit,
            pl_module,
            optimizer,
            self.backbone,
            self.groups_spec,
            dataclasses.replace(self.config, max_epochs=budget),
            restore_optimizer=self.restore_optimizer,
            lr_scheduler=lr_schedulers,
            param_group_fn=self.param_group_fn,
        )
        if self._saved is not None:
            self._apply_saved_state()

    def _apply_saved_state(self) -> None:
        tuner, saved = self.tuner, self._saved
        assert tuner is not None and saved is not None
        try:
            plan = tuner._plan_load(with_budget(saved.tuner, tuner.scheduler.max_epochs))
            check_pending_restore(saved)
        except ValueError as err:
            raise ValueError(f"{self._source}: {err}") from None
        check_resume_point(
            plan.epoch,
            saved.validations,
            f"{self._source} (epochs count validations here)",
            "The checkpoint was written while a validation ran, before DynamicFineTuning "
            "decided on it (by a signal handler, or a callback saving during validation); "
            "resume from a checkpoint written by ModelCheckpoint",
        )
        tuner._apply_load(plan)
        tuner.pending_restore = saved.pending_restore
        self._validations = saved.validations
        self._saved = None
        self._resumed = True
        if tuner.scheduler.num_unfrozen:
            _rewrap_ddp(self._trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_validation_batches(trainer)
        warn_if_checkpoints_can_tear(trainer)
        if self._cadence_note is not None and trainer.is_global_zero:
            log.info(self._cadence_note)

    # -- training -----------------------------------------------------------------------------

    def _stop_fit(self) -> None:
        assert self._trainer is not None
        self._trainer.should_stop = True

    def _deciding(self, trainer: pl.Trainer) -> bool:
        return (
            self.tuner is not None
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not self.tuner.scheduler.stopped
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tuner is not None:
            self.tuner.before_training_batch()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.tuner is not None:
            self.tuner.before_training_batch()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deciding(trainer):
            self._validations += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._deciding(trainer):
            return
        assert self.tuner is not None
        monitor = self.config.monitor
        value = trainer.callback_metrics.get(monitor)
        if value is None:
            raise RuntimeError(
                f"DynamicFineTuning monitors {monitor!r} but validation logged only "
                f"{sorted(trainer.callback_metrics)}; log it with self.log({monitor!r}, ...) in "
                "validation_step, or pass monitor= one of these"
            )
        decision = self.tuner.step(value)
        if decision.newly_unfrozen:
            _rewrap_ddp(trainer)
        self._log(trainer, decision)

    def _log(self, trainer: pl.Trainer, decision: Decision) -> None:
        if trainer.is_global_zero and (decision.unfroze or decision.stop):
            log.info("DynamicFineTuning: %s", decision.reason)

    # -- fit end ------------------------------------------------------------------------------

    def _finish(self, trainer: pl.Trainer, why: str) -> None:
        if self.tuner is None:
            return
        already = self.tuner.scheduler.stopped
        decision = self.tuner.finish(why)
        if not already:
            self._log(trainer, decision)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, "the Trainer ended the fit")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, "the Trainer ended the fit")
        self._active = False

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not self._active:
            return
        self._active = False
        if isinstance(exception, SIGTERMException):
            return  # a preemption: the run goes on from a checkpoint, as it was
        if self.tuner is None or (self.tuner.scheduler.epoch == 0 and not self._resumed):
            self._undo_freeze()
            return
        self._finish(trainer, f"interrupted by {type(exception).__name__}")

    def _undo_freeze(self) -> None:
        if self.tuner is not None:
            self.tuner.batchnorm.remove()
        for parameter, requires_grad in self._flags_before:
            parameter.requires_grad_(requires_grad)
        for module, training in self._modes_before:
            module.training = training

    def state_dict(self) -> dict[str, Any]:
        if self.tuner is None:
            return {}
        return callback_state(self.tuner, self._validations)


def _rewrap_ddp(trainer: pl.Trainer | None) -> None:
    """Wrap the module in a new DDP so that its reducer averages every trainable parameter."""
    strategy = None if trainer is None else trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()

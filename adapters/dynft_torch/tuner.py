"""``DynamicFineTuner``: carries out the core's decisions on a PyTorch model and optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from dynft_core import Decision, FineTuneConfig, carry_out
from dynft_core.plateau import as_metric
from dynft_core.scheduler import check_bool

from .distributed import check_ranks_agree, mean_over_ranks, unwrap_model
from .freezing import (
    BatchNormFreezer,
    backbone_batchnorms,
    batchnorm_parameter_names,
    freeze_parameter,
    warn_zero_weight_batchnorms,
)
from .group_specs import GroupSpec
from .groups import BackboneGroup, group_table, resolve_groups
from .lr_schedulers import (
    as_scheduler_list,
    is_scheduled,
    refresh_last_lr,
    scale_scheduler_rates,
)
from .optim import OptimizerStateSnapshot, reset_optimizer_state
from .param_groups import (
    ParamGroupFn,
    ParamGroupPlacer,
    check_optimizer,
    check_param_group_fn,
    scale_group_rates,
)
from .snapshot import WeightSnapshot
from .training_watch import TrainingWatch, warn_when_discarded_unfinished
from .tuner_state import LoadPlan, load_plan, tuner_state


class DynamicFineTuner:
    """Validation-driven dynamic fine-tuning (Algorithm 1) for a plain PyTorch training loop.

    On construction every backbone group is frozen (``requires_grad=False``, gradients
    dropped) and the backbone's BatchNorm layers are held in inference mode with frozen affine
    parameters. Call [`step`][dynft_torch.DynamicFineTuner.step] once per epoch with the
    validation value; the [`Decision`][dynft_core.Decision] it returns has already been carried
    out by [`carry_out`][dynft_core.carry_out] through this tuner's actions. When a decision
    says ``stop`` the model holds the best-validation weights; a loop that ends otherwise calls
    [`finish`][dynft_torch.DynamicFineTuner.finish], or uses the tuner as a context manager
    (``with DynamicFineTuner(...) as tuner:`` finishes on exit, also on an exception).

    Args:
        model: The network. ``DistributedDataParallel``, ``DataParallel`` and
            ``torch.compile`` wrappers are unwrapped (names are those of the inner module);
            FSDP is refused.
        optimizer: The optimizer training the model. It may hold all parameters or only the
            head's; it must hold at least one trainable parameter. Parameters unfrozen later
            that it lacks are added in new param groups following its weight-decay split.
        backbone: The pretrained part to freeze: a submodule or its name. Defaults to ``None``,
            the whole model minus a recognised head (``fc``, ``classifier``, ``head`` ...).
        groups: ``"auto"`` (default), ``"layers"``, ``"modules"`` or an explicit list; see
            [`resolve_groups`][dynft_torch.resolve_groups].
        config: A [`FineTuneConfig`][dynft_core.FineTuneConfig]; ``**options`` replace its
            fields (``patience``, ``step``, ``decay``, ``max_epochs``, ``min_delta``,
            ``monitor``, ``mode``, ``unfrozen_lr_ratio``, ``restore_best_weights``,
            ``train_batchnorm``). A plain loop has no epoch budget of its own: with
            ``max_epochs=None`` (the default) the run ends at the final plateau or at
            ``finish``. ``monitor`` only names the value passed to ``step`` so that
            ``mode="auto"`` can tell its direction (``"val_loss"``: min, ``"val_accuracy"``:
            max).
        restore_optimizer: Also roll the optimizer's per-parameter state (momenta, Adam
            moments) back to the best epoch. Defaults to ``False``: Algorithm 1 restores the
            weights only. After a non-finite epoch the state is reset instead, either way
            leaving nothing non-finite behind.
        lr_scheduler: The learning-rate scheduler(s) on ``optimizer`` (one or a list), kept on
            schedule through unfreezes: every class of ``torch.optim.lr_scheduler``; others
            via [`register_lr_scheduler`][dynft_torch.register_lr_scheduler]. A scheduler
            attached to the optimizer must be passed.
        param_group_fn: ``(name, parameter) -> dict | None``: settings (``weight_decay`` ...)
            for a parameter the tuner puts in a new param group, overriding those of the group
            it follows. Defaults to ``None``.
        sync_ranks: Average the monitored value over all ranks of the default process group so
            that every rank takes the same decision, and check that the ranks' weights agree.
            Defaults to ``True`` (no effect outside ``torch.distributed``).
        **options: [`FineTuneConfig`][dynft_core.FineTuneConfig] fields.

    Attributes:
        config: The validated options.
        scheduler: The [`UnfreezeScheduler`][dynft_core.UnfreezeScheduler] taking every
            decision.
        groups: The [`BackboneGroup`][dynft_torch.BackboneGroup] list, shallowest first.
        batchnorm: The [`BatchNormFreezer`][dynft_torch.BatchNormFreezer] of the backbone.
        snapshot: The [`WeightSnapshot`][dynft_torch.WeightSnapshot] of the best epoch.

    Raises:
        TypeError: An unknown option, an FSDP model, a ``model`` that is not an ``nn.Module``,
            an ``optimizer`` that is not a ``torch.optim.Optimizer``, or a ``param_group_fn``
            that is not callable.
        ValueError: An invalid option, bad groups, an optimizer holding a parameter twice, a
            tensor that is not a parameter of the model or no trainable parameter, an
            unsupported or unpassed LR scheduler, nothing left to train, or a
            ``param_group_fn`` that would never be called (every backbone parameter already in
            the optimizer with ``unfrozen_lr_ratio=1.0``). Nothing is changed then.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        backbone: nn.Module | str | None = None,
        groups: str | Sequence[GroupSpec] = "auto",
        config: FineTuneConfig | None = None,
        *,
        restore_optimizer: bool = False,
        lr_scheduler: object | Sequence[object] | None = None,
        param_group_fn: ParamGroupFn | None = None,
        sync_ranks: bool = True,
        **options: Any,
    ) -> None:
        self.config = FineTuneConfig.from_options(config, **options)
        check_bool("restore_optimizer", restore_optimizer)
        check_bool("sync_ranks", sync_ranks)
        check_param_group_fn(param_group_fn)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_model(model)
        self.groups: list[BackboneGroup] = resolve_groups(self.model, backbone, groups)
        self._parameters = dict(self.model.named_parameters())
        self._names_by_id = {id(p): name for name, p in self._parameters.items()}
        grouped = {name for group in self.groups for name in group.parameter_names}
        head = [n for n, p in self._parameters.items() if p.requires_grad and n not in grouped]
        if not head:
            raise ValueError(
                "every parameter of the model would be frozen: the head must stay trainable; "
                "pass backbone= (the pretrained part) so that the head lies outside it"
            )
        lr_schedulers = as_scheduler_list(lr_scheduler)
        check_optimizer(
            optimizer, self._parameters, head, lr_schedulers, self.config.unfrozen_lr_ratio
        )
        placer = ParamGroupPlacer(optimizer, self._parameters, param_group_fn, lr_schedulers)
        layers = backbone_batchnorms(self.model, self.groups)
        self._batchnorm_parameters = batchnorm_parameter_names(layers)
        unfreezable = [
            (n, self._parameters[n]) for g in self.groups for n in self.trainable_parameter_names(g)
        ]
        placements = placer.plan(unfreezable, self.config.unfrozen_lr_ratio)  # refuse ambiguity now
        if param_group_fn is not None and not placements:
            raise ValueError(
                "param_group_fn would never be called: the optimizer already holds every "
                "backbone parameter and unfrozen_lr_ratio=1.0 keeps them in its param groups, "
                "so no new group is made. Set those settings in the optimizer's param groups, "
                "or build the optimizer from the head's parameters only"
            )

        # Everything is checked: from here on the model is changed.
        self.optimizer = optimizer
        self.lr_schedulers = lr_schedulers
        self.sync_ranks = sync_ranks
        self.scheduler = self.config.scheduler(len(self.groups), self.config.budget(None))
        self.batchnorm = BatchNormFreezer(layers)
        if not self.config.train_batchnorm:
            warn_zero_weight_batchnorms(layers)
            self._warn_empty_groups()
        for name in grouped:
            freeze_parameter(self._parameters[name])
        self.snapshot = WeightSnapshot(self.model)
        self._placer = placer
        self._param_group_fn = param_group_fn
        self._optimizer_snapshot = (
            OptimizerStateSnapshot(optimizer, self._names_by_id) if restore_optimizer else None
        )
        self._watch = TrainingWatch()
        self._watch.attach(optimizer)
        self._watch.mark(self._trainable())
        warn_when_discarded_unfinished(self, self.scheduler, self._watch)

    @property
    def restore_optimizer(self) -> bool:
        """Whether rollbacks restore the optimizer state too."""
        return self._optimizer_snapshot is not None

    def _warn_empty_groups(self) -> None:
        empty = [i for i, g in enumerate(self.groups) if not self.trainable_parameter_names(g)]
        if empty:
            names = ", ".join(self.groups[i].name for i in empty[:4])
            warnings.warn(
                f"dynft: groups {empty} ({names}{' ...' if len(empty) > 4 else ''}) hold only "
                "BatchNorm parameters, which stay frozen (train_batchnorm=False): unfreezing "
                "them trains nothing, yet counts toward step and applies the decay. Use "
                "groups='layers' (weight layers only, the paper's unit) or train_batchnorm=True",
                UserWarning,
                stacklevel=3,
            )

    def trainable_parameter_names(self, group: BackboneGroup) -> list[str]:
        """Names of the parameters that unfreezing ``group`` makes trainable.

        BatchNorm parameters are left out unless ``train_batchnorm=True``.
        """
        if self.config.train_batchnorm:
            return list(group.parameter_names)
        return [n for n in group.parameter_names if n not in self._batchnorm_parameters]

    def changeable_tensor_names(self) -> list[str]:
        """Parameters that currently require grad and buffers outside frozen BatchNorm layers."""
        frozen_buffers = self.batchnorm.buffer_names()
        names = [n for n, p in self._parameters.items() if p.requires_grad]
        names += [n for n, _ in self.model.named_buffers() if n not in frozen_buffers]
        return names

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self._parameters.values() if p.requires_grad]

    def step(self, value: float | torch.Tensor) -> Decision:
        """Decide after one epoch and carry the decision out.

        Args:
            value: The monitored validation value: a number or a 0-d tensor. NaN/inf count as
                no improvement and roll the model back to the best epoch at once.

        Returns:
            The scheduler's [`Decision`][dynft_core.Decision], already carried out.

        Raises:
            TypeError: ``value`` is not a single real number.
            RuntimeError: Training already stopped; the model was trained by another optimizer
                since the last step; an LR scheduler was built on the optimizer after the tuner
                without being handed over; or (distributed) the ranks' weights differ.
        """
        if self.scheduler.stopped:
            raise RuntimeError(
                f"step() called after training stopped at epoch {self.scheduler.epoch}; "
                "build a new DynamicFineTuner to train again"
            )
        number = as_metric(value)
        self._watch.check_trained_by_the_optimizer()
        if not self.lr_schedulers and is_scheduled(self.optimizer):
            raise RuntimeError(
                "a learning-rate scheduler was built on the tuner's optimizer after the tuner; "
                "hand it over with tuner.set_optimizer(optimizer, lr_scheduler=scheduler) so "
                "that the unfreeze decay and the new param groups follow it"
            )
        if self.sync_ranks:
            number = mean_over_ranks(number)
            unfreezes = [d.epoch for d in self.scheduler.history if d.newly_unfrozen]
            check_ranks_agree(
                self._trainable(), self.scheduler.epoch + 1, unfreezes[-1] if unfreezes else None
            )
        return self._carry_out(self.scheduler.step(number))

    def finish(self, why: str = "training ended") -> Decision:
        """Close the run: restore the best weights unless it already stopped (idempotent).

        Call it when the loop ends before a decision said ``stop`` (a shorter loop, an early
        exit). With ``restore_best_weights=False`` the last weights are kept.

        Args:
            why: What ended training, for the decision's ``reason``.

        Returns:
            The closing [`Decision`][dynft_core.Decision] (``external_stop=True``).
        """
        return self._carry_out(self.scheduler.finish(why))

    def _carry_out(self, decision: Decision) -> Decision:
        carry_out(decision, self, self.config.unfrozen_lr_ratio)
        self._watch.mark(self._trainable(), decision)
        return decision

    def __enter__(self) -> DynamicFineTuner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish("the with block ended" if kind is None else f"interrupted by {kind.__name__}")

    # The FineTuningActions that dynft_core.carry_out calls, in its order.

    def capture_best(self) -> None:
        """Copy the changeable tensors (and the optimizer state, if kept) as the best state."""
        self.snapshot.capture(self.changeable_tensor_names())
        if self._optimizer_snapshot is not None:
            self._optimizer_snapshot.capture()

    def unfreeze(self, groups: tuple[int, ...], lr_ratio: float) -> None:
        """Make ``groups`` trainable and give the optimizer their parameters."""
        named = self._make_trainable(groups)
        self.snapshot.extend([name for name, _ in named] + self._release_batchnorm(groups))
        self._placer.add_all(self._placer.plan(named, lr_ratio), lr_ratio)
        refresh_last_lr(self.lr_schedulers, self.optimizer)

    def scale_learning_rate(self, factor: float) -> None:
        """Multiply every rate of the optimizer and of its schedulers by ``factor``."""
        scale_group_rates(self.optimizer, factor)
        scale_scheduler_rates(self.lr_schedulers, factor)
        refresh_last_lr(self.lr_schedulers, self.optimizer)

    def restore_best(self, diverged: bool = False) -> None:
        """Load the best snapshot into the model; nothing before the first improvement.

        With ``restore_optimizer`` the optimizer state of the best epoch is restored too;
        otherwise, after a non-finite epoch (``diverged``), the optimizer state is reset, since
        its momenta hold NaN/inf that would spread into the restored weights.
        """
        if self.snapshot.empty:
            return
        self.snapshot.restore()
        if self._optimizer_snapshot is not None:
            self._optimizer_snapshot.restore()
        elif diverged:
            reset_optimizer_state(self.optimizer)

    def stop_training(self) -> None:
        """Nothing to do: a plain loop ends itself when ``decision.stop`` is true."""

    def _make_trainable(self, indices: Sequence[int]) -> list[tuple[str, nn.Parameter]]:
        named = [
            (n, self._parameters[n])
            for i in indices
            for n in self.trainable_parameter_names(self.groups[i])
        ]
        for _, parameter in named:
            parameter.requires_grad_(True)
        return named

    def _release_batchnorm(self, indices: Sequence[int]) -> list[str]:
        if not self.config.train_batchnorm:
            return []
        layers = backbone_batchnorms(self.model, [self.groups[i] for i in indices])
        return self.batchnorm.release(layers, self.model.training)

    def set_optimizer(
        self, optimizer: torch.optim.Optimizer, lr_scheduler: object | Sequence[object] = None
    ) -> None:
        """Hand over a new optimizer (and its schedulers), or new schedulers for the same one.

        The trainable parameters it lacks (of the groups unfrozen so far) are added as at an
        unfreeze; its learning rates are taken as they are. With ``restore_optimizer`` the
        optimizer snapshot starts empty (a rollback before the next improvement resets the
        optimizer state).

        Raises:
            ValueError: As for the constructor; nothing is changed then.
        """
        schedulers = as_scheduler_list(lr_scheduler)
        trainable = [n for n, p in self._parameters.items() if p.requires_grad]
        check_optimizer(
            optimizer, self._parameters, trainable, schedulers, self.config.unfrozen_lr_ratio
        )
        if optimizer is self.optimizer:
            self.lr_schedulers = self._placer.lr_schedulers = schedulers
            return
        placer = ParamGroupPlacer(optimizer, self._parameters, self._param_group_fn, schedulers)
        unfrozen = self._make_trainable(self.scheduler.trainable_groups)
        placements = placer.plan(unfrozen, self.config.unfrozen_lr_ratio)
        self._watch.attach(optimizer)
        self.optimizer, self.lr_schedulers, self._placer = optimizer, schedulers, placer
        placer.add_all(placements, self.config.unfrozen_lr_ratio)
        refresh_last_lr(schedulers, optimizer)
        if self._optimizer_snapshot is not None:
            self._optimizer_snapshot = OptimizerStateSnapshot(optimizer, self._names_by_id)
        self._watch.mark(self._trainable())

    def group_table(self) -> str:
        """The groups as text: index, name, parameter count, trainable or frozen.

        ``print(tuner.group_table())`` shows what ``groups=`` resolved to.
        """
        frozen = set() if self.config.train_batchnorm else self._batchnorm_parameters
        return group_table(self.groups, self._parameters, self.scheduler.trainable_groups, frozen)

    def state_dict(self) -> dict[str, Any]:
        """Options, scheduler state, group layout, added param groups and snapshots.

        Keyed by parameter names; contains only dicts, lists, strings, numbers, ``None`` and
        tensors, so ``torch.load(path, weights_only=True)`` reads a saved copy. Save it with
        [`save_checkpoint`][dynft_torch.save_checkpoint].
        """
        return tuner_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from [`state_dict`][dynft_torch.DynamicFineTuner.state_dict].

        Call it on a freshly built tuner configured like the saved one, after
        ``model.load_state_dict`` and before ``optimizer.load_state_dict`` (it re-creates the
        param groups the run added, which the optimizer state refers to), or let
        [`load_checkpoint`][dynft_torch.load_checkpoint] do all three. Every field is checked
        before anything changes.

        Raises:
            ValueError: The state is not a tuner state of this version, was saved with other
                options, groups or scheduler configuration, or a field is missing, of the
                wrong type or inconsistent (the message names the key); the tuner, the model
                and the optimizer are then unchanged.
        """
        self._apply_load(self._plan_load(state))

    def _plan_load(self, state: object) -> LoadPlan:
        return load_plan(self, state)

    def _apply_load(self, plan: LoadPlan) -> None:
        self.scheduler.load_state_dict(plan.scheduler_state)
        self._make_trainable(self.scheduler.trainable_groups)
        self._release_batchnorm(self.scheduler.trainable_groups)
        self._placer.add_all(plan.placements, self.config.unfrozen_lr_ratio)
        refresh_last_lr(self.lr_schedulers, self.optimizer)
        self.snapshot.load_state_dict(plan.snapshot)
        if self._optimizer_snapshot is not None and plan.optimizer_snapshot is not None:
            self._optimizer_snapshot.load_state_dict(plan.optimizer_snapshot)
        self._watch.mark(self._trainable())

    def __repr__(self) -> str:
        return (
            f"DynamicFineTuner({type(self.model).__name__}, {len(self.groups)} groups, "
            f"{len(self.batchnorm.layers)} frozen BatchNorm layers; {self.scheduler!r})"
        )

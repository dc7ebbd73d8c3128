"""``DynamicFineTuner``: carries out the scheduler's decisions on a PyTorch model and optimizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dynft_core import Decision, UnfreezeScheduler
from dynft_core.plateau import as_metric

from .distributed import mean_over_ranks, unwrap_model
from .freezing import BatchNormFreezer, backbone_batchnorms, freeze_parameter
from .groups import BackboneGroup, GroupSpec, resolve_groups
from .optim import (
    OptimizerStateSnapshot,
    add_missing_parameters,
    optimizer_parameter_ids,
    scale_learning_rates,
)
from .snapshot import WeightSnapshot

STATE_FORMAT = "dynft_torch.DynamicFineTuner"
STATE_VERSION = 1


class DynamicFineTuner:
    """Validation-driven dynamic fine-tuning (Algorithm 1) for a plain PyTorch training loop.

    On construction every backbone group is frozen (``requires_grad=False``, gradients
    dropped) and the backbone's BatchNorm layers are held in inference mode with frozen affine
    parameters. Call :meth:`step` once per epoch with the validation value; it applies the
    scheduler's decision in this order: snapshot the changeable tensors if improved, unfreeze
    the newly unfrozen groups (adding them to the optimizer if it lacks them), multiply every
    learning rate by ``lr_factor``, restore the best snapshot if asked. When a decision says
    ``stop`` the model already holds the best-validation weights.

    Args:
        model: The network (a ``DistributedDataParallel`` or ``torch.compile`` wrapper is
            unwrapped; names are those of the inner module).
        optimizer: The optimizer training the model. It may hold all parameters or only the
            head's; parameters unfrozen later are added as a new param group if missing.
        backbone: The pretrained part to freeze: a submodule or its name. Defaults to ``None``,
            the whole model minus a recognised head (``fc``, ``classifier``, ``head`` ...).
        groups: ``"auto"`` (default, architecture-aware blocks), ``"modules"`` (one group per
            leaf module with parameters) or an explicit list, ordered input to head, of
            modules, module names or lists of those.
        patience: Epochs without improvement before an unfreeze or stop. Defaults to 5.
        step: Groups unfrozen per unfreeze. Defaults to 3.
        decay: Learning-rate decay per unfreeze, ``0 <= decay < 1``. Defaults to 0.1.
        max_epochs: Epoch budget. Defaults to 100.
        min_delta: Minimum change counted as an improvement. Defaults to 0.
        mode: ``"min"`` (a loss, default) or ``"max"`` (e.g. accuracy).
        restore_optimizer: Also roll the optimizer's per-parameter state (momenta, Adam
            moments) back to the best epoch. Defaults to ``False``: Algorithm 1 restores the
            weights only.
        lr_scheduler: Optional learning-rate scheduler on ``optimizer`` whose base rates must
            follow the decay (LambdaLR, CosineAnnealingLR, OneCycleLR, CyclicLR).
            Defaults to ``None``; ReduceLROnPlateau, StepLR and other schedulers that multiply
            the current ``lr`` need nothing.
        sync_ranks: Average the monitored value over all ranks of the default process group so
            that every rank takes the same decision. Defaults to ``True`` (no effect outside
            ``torch.distributed``).

    Attributes:
        scheduler: The :class:`dynft_core.UnfreezeScheduler` taking every decision.
        groups: The :class:`~dynft_torch.groups.BackboneGroup` list, shallowest first.
        batchnorm: The :class:`~dynft_torch.freezing.BatchNormFreezer` of the backbone.
        snapshot: The :class:`~dynft_torch.snapshot.WeightSnapshot` of the best epoch.

    Raises:
        ValueError: Invalid scheduler arguments, bad groups (see
            :func:`~dynft_torch.groups.resolve_groups`), an optimizer holding a parameter
            twice or a tensor that is not a parameter of the model, or nothing left to train.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        backbone: nn.Module | str | None = None,
        groups: str | Sequence[GroupSpec] = "auto",
        patience: int = 5,
        step: int = 3,
        decay: float = 0.1,
        max_epochs: int = 100,
        min_delta: float = 0.0,
        mode: str = "min",
        restore_optimizer: bool = False,
        lr_scheduler: object | None = None,
        sync_ranks: bool = True,
    ) -> None:
        self.model = unwrap_model(model)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.sync_ranks = sync_ranks
        self.groups: list[BackboneGroup] = resolve_groups(self.model, backbone, groups)
        self.scheduler = UnfreezeScheduler(
            len(self.groups), patience, step, decay, max_epochs, min_delta, mode
        )
        self._parameters = dict(self.model.named_parameters())
        self._names_by_id = {id(p): name for name, p in self._parameters.items()}
        self._check_optimizer()
        grouped = {name for group in self.groups for name in group.parameter_names}
        if not any(p.requires_grad for n, p in self._parameters.items() if n not in grouped):
            raise ValueError(
                "every parameter of the model would be frozen: the head must stay trainable; "
                "pass backbone= (the pretrained part) so that the head lies outside it"
            )

        self.batchnorm = BatchNormFreezer(backbone_batchnorms(self.model, self.groups))
        self._frozen_batchnorm_parameters = self.batchnorm.parameter_names()
        for name in grouped:
            freeze_parameter(self._parameters[name])
        self.snapshot = WeightSnapshot(self.model)
        self._optimizer_snapshot = (
            OptimizerStateSnapshot(optimizer, self._names_by_id) if restore_optimizer else None
        )
        self._added_param_groups: list[list[str]] = []

    def _check_optimizer(self) -> None:
        held = optimizer_parameter_ids(self.optimizer)
        foreign = held - set(self._names_by_id)
        if foreign:
            raise ValueError(
                f"the optimizer holds {len(foreign)} tensors that are not parameters of the "
                f"model {type(self.model).__name__}; build it from model.parameters()"
            )

    @property
    def restore_optimizer(self) -> bool:
        """Whether rollbacks restore the optimizer state too."""
        return self._optimizer_snapshot is not None

    def trainable_parameter_names(self, group: BackboneGroup) -> list[str]:
        """Names of the parameters that unfreezing ``group`` makes trainable (no BatchNorm)."""
        return [n for n in group.parameter_names if n not in self._frozen_batchnorm_parameters]

    def changeable_tensor_names(self) -> list[str]:
        """Parameters that currently require grad and buffers outside frozen BatchNorm layers."""
        frozen_buffers = self.batchnorm.buffer_names()
        names = [n for n, p in self._parameters.items() if p.requires_grad]
        names += [n for n, _ in self.model.named_buffers() if n not in frozen_buffers]
        return names

    def step(self, value: float | torch.Tensor) -> Decision:
        """Decide after one epoch and carry the decision out.

        Args:
            value: The monitored validation value: a number or a 0-d tensor. NaN/inf count as
                no improvement.

        Returns:
            The scheduler's :class:`dynft_core.Decision` (already applied).

        Raises:
            TypeError: ``value`` is not a single real number.
            RuntimeError: A previous decision already stopped training.
        """
        number = as_metric(value)
        if self.sync_ranks:
            number = mean_over_ranks(number)
        decision = self.scheduler.step(number)
        self.apply(decision)
        return decision

    def apply(self, decision: Decision) -> None:
        """Carry out ``decision`` (called by :meth:`step`; exposed for custom drivers)."""
        if decision.improved:
            self.snapshot.capture(self.changeable_tensor_names())
            if self._optimizer_snapshot is not None:
                self._optimizer_snapshot.capture()
        if decision.newly_unfrozen:
            self._unfreeze(decision.newly_unfrozen)
        scale_learning_rates(self.optimizer, decision.lr_factor, self.lr_scheduler)
        if decision.restore_best:
            self.restore_best()

    def _unfreeze(self, indices: Sequence[int]) -> None:
        named = self._make_trainable(indices)
        self.snapshot.extend(name for name, _ in named)
        self._add_to_optimizer(named)

    def _make_trainable(self, indices: Sequence[int]) -> list[tuple[str, nn.Parameter]]:
        named = [
            (name, self._parameters[name])
            for index in indices
            for name in self.trainable_parameter_names(self.groups[index])
        ]
        for _, parameter in named:
            parameter.requires_grad_(True)
        return named

    def _add_to_optimizer(self, named: Sequence[tuple[str, nn.Parameter]]) -> None:
        added = add_missing_parameters(self.optimizer, named)
        if added:
            self._added_param_groups.append(added)

    def restore_best(self) -> None:
        """Load the best snapshot into the model (and the optimizer, if ``restore_optimizer``).

        Does nothing before the first improvement.
        """
        self.snapshot.restore()
        if self._optimizer_snapshot is not None and not self.snapshot.empty:
            self._optimizer_snapshot.restore()

    def state_dict(self) -> dict[str, Any]:
        """Scheduler state, group layout and snapshots, keyed by parameter names.

        Contains only dicts, lists, strings, numbers, ``None`` and tensors, so
        ``torch.load(path, weights_only=True)`` reads a ``torch.save``-d copy.
        """
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "scheduler": self.scheduler.state_dict(),
            "group_parameter_names": [list(g.parameter_names) for g in self.groups],
            "added_param_groups": [list(names) for names in self._added_param_groups],
            "snapshot": self.snapshot.state_dict(),
            "optimizer_snapshot": (
                None if self._optimizer_snapshot is None else self._optimizer_snapshot.state_dict()
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: re-unfreezes the trainable groups and re-adds the
        param groups the run had added.

        Call it on a tuner built like the saved one, after ``model.load_state_dict`` and
        *before* ``optimizer.load_state_dict`` (the optimizer state refers to the re-added
        param groups).

        Raises:
            ValueError: The state is not a tuner state of this version, or it was saved with
                other groups or another scheduler configuration.
        """
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a {STATE_FORMAT} state of version {STATE_VERSION}: got format "
                f"{state.get('format')!r}, version {state.get('version')!r}"
            )
        saved_groups = [tuple(names) for names in state["group_parameter_names"]]
        mine = [g.parameter_names for g in self.groups]
        if saved_groups != mine:
            raise ValueError(
                f"the state was saved with {len(saved_groups)} groups that differ from this "
                f"tuner's {len(mine)} groups; build the tuner with the same model, backbone "
                "and groups"
            )
        self.scheduler.load_state_dict(state["scheduler"])
        self._make_trainable(self.scheduler.trainable_groups)
        self._added_param_groups = []
        for names in state["added_param_groups"]:
            self._add_to_optimizer([(name, self._parameters[name]) for name in names])
        self.snapshot.load_state_dict(state["snapshot"])
        if self._optimizer_snapshot is not None and state["optimizer_snapshot"] is not None:
            self._optimizer_snapshot.load_state_dict(state["optimizer_snapshot"])

    def __repr__(self) -> str:
        return (
            f"DynamicFineTuner({type(self.model).__name__}, {len(self.groups)} groups, "
            f"{len(self.batchnorm.layers)} frozen BatchNorm layers; {self.scheduler!r})"
        )

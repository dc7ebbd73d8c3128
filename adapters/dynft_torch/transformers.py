"""Hugging Face ``Trainer`` callback: ``Trainer(..., callbacks=[DynamicFineTuningCallback()])``.

The callback owns a [`DynamicFineTuner`][dynft_torch.DynamicFineTuner] built on Trainer's own
optimizer and LR scheduler, and carries its decisions out at these events (transformers 5):

* ``on_init_end`` (in ``Trainer(...)``): refuse settings dynft cannot work under; make every
  backbone-group parameter trainable, so that the optimizer Trainer creates in ``train()``
  holds all of them, with Trainer's own weight-decay split, and its LR scheduler schedules all
  of them. An unfreeze then adds nothing to the optimizer, and every checkpoint has the param
  groups a freshly created Trainer optimizer has (which is what lets ``optimizer.pt`` load on
  resume, before any callback event).
* ``on_train_begin`` (the optimizer and scheduler exist, DDP has wrapped the model with every
  parameter registered, checkpoint state is loaded): build the tuner, which freezes the
  backbone groups before the first step; on resume, load ``dynft_state.pt`` from the
  checkpoint after checking it against what Trainer restored.
* ``on_evaluate`` (after each evaluation, before Trainer saves the checkpoint): decide and
  carry out; a stop sets ``control.should_training_stop``. The checkpoint saved next holds the
  state after the decision (rolled-back weights, decayed rates).
* ``on_save``: write ``dynft_state.pt`` into the new ``checkpoint-N``.
* ``on_train_end`` (after ``load_best_model_at_end``): end on the best evaluation however the
  run ended.

No per-step work: the callback has no ``on_step_*`` event.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import transformers
from torch import nn
from transformers.utils import logging

from dynft_core import Decision, FineTuneConfig
from dynft_core.scheduler import check_bool

from .group_specs import GroupSpec
from .groups import check_group_arguments, resolve_groups
from .param_groups import held_groups
from .trainer_arguments import (
    check_model,
    check_training_arguments,
    planned_evaluations,
    resolve_monitor,
)
from .trainer_checkpoint import (
    DECISION_KEY,
    RESUME_REMEDY,
    STATE_FILE,
    check_resumed,
    check_weights,
    checkpoint_folder,
    load_state,
    save_state,
)
from .tuner import DynamicFineTuner

# A child of transformers' library logger: TrainingArguments(log_level=...) sets its level and
# the replicas of a multi-process run stay quiet (log_level_replica).
logger = logging.get_logger("transformers.dynft")

_DEFAULTS = FineTuneConfig()


class DynamicFineTuningCallback(transformers.TrainerCallback):
    """Validation-driven dynamic fine-tuning (Algorithm 1) inside Hugging Face ``Trainer``.

    Add it to an otherwise unchanged ``Trainer``:

    ```python
    trainer = Trainer(model, args, train_dataset=..., eval_dataset=...,
                      callbacks=[DynamicFineTuningCallback(patience=2, step=2)])
    trainer.train()   # or trainer.train(resume_from_checkpoint=True)
    ```

    The backbone groups (``groups="auto"``: embeddings, one group per encoder block or stage
    block, the final norm with the deepest block) are frozen when training starts, the task
    head trains. After every evaluation (a decision per epoch with ``eval_strategy="epoch"``, per
    evaluation with ``"steps"``: ``patience`` and ``max_epochs`` then count evaluations) the
    monitored metric is checked; after ``patience`` evaluations without improvement the next
    ``step`` groups (deepest first) train, every learning rate (through Trainer's LR
    scheduler) is multiplied by ``1 - decay``, and the weights roll back in memory to the best
    evaluation. Backbone BatchNorm layers stay in inference mode. At the end of training the
    model in the Trainer holds the best evaluation's weights, whatever ended the run.

    Args:
        config: A [`FineTuneConfig`][dynft_core.FineTuneConfig]; ``**options`` replace its
            fields.
        backbone: The pretrained part to freeze: a submodule or its name. Defaults to ``None``:
            the task model's base model (``model.vit``, ``model.bert`` ...); the head
            (``classifier``, BERT's ``pooler`` ...) trains from the start.
        groups: ``"auto"`` (default), ``"layers"``, ``"modules"`` or an explicit list; see
            [`resolve_groups`][dynft_torch.resolve_groups].
        restore_optimizer: Roll the optimizer state (Adam moments) back with the weights.
            Defaults to ``False`` (Algorithm 1 restores the weights only).
        resume_from: The checkpoint folder ``trainer.train(resume_from_checkpoint=...)`` resumes
            from, when it lies outside ``output_dir`` (a callback cannot see that argument).
            Defaults to ``None``: ``output_dir/checkpoint-<step>``.
        **options: [`FineTuneConfig`][dynft_core.FineTuneConfig] fields: ``patience`` (5),
            ``step`` (3), ``decay`` (0.1), ``max_epochs`` (``None``: Trainer's
            ``num_train_epochs``/``max_steps`` end the run), ``min_delta`` (0),
            ``monitor``/``mode`` (default: Trainer's ``metric_for_best_model`` and
            ``greater_is_better``, ``eval_loss`` when unset; a monitor without the ``eval_``
            prefix gets it, as in Trainer), ``restore_best_weights`` (``True``),
            ``train_batchnorm`` (``False``), ``unfrozen_lr_ratio`` (1.0; other values only
            with ``save_strategy="no"``).

    Attributes:
        config: The options (monitor and mode as given; the resolved ones are in
            ``tuner.config`` once training started).
        tuner: The [`DynamicFineTuner`][dynft_torch.DynamicFineTuner] (``None`` before
            ``on_train_begin``); ``print(callback.tuner.group_table())`` shows the groups.

    Raises:
        TypeError: An unknown option, a ``backbone`` that is neither a module nor a name, or a
            ``resume_from`` that is not a path.
        ValueError: An invalid option or ``groups`` (at construction); a refused Trainer
            setting (in ``Trainer(...)`` or ``train()``, before anything changes).
    """

    def __init__(
        self,
        config: FineTuneConfig | None = None,
        *,
        backbone: nn.Module | str | None = None,
        groups: str | Sequence[GroupSpec] = "auto",
        restore_optimizer: bool = False,
        resume_from: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        self.config = FineTuneConfig.from_options(config, **options)
        self._explicit_monitor = "monitor" in options or self.config.monitor != _DEFAULTS.monitor
        self._explicit_mode = "mode" in options or self.config.mode != _DEFAULTS.mode
        self.restore_optimizer = check_bool("restore_optimizer", restore_optimizer)
        check_group_arguments(backbone, groups)
        self.backbone = backbone
        self.groups = groups
        if resume_from is not None and not isinstance(resume_from, (str, os.PathLike)):
            raise TypeError(
                "resume_from must be None or the path of a checkpoint-N folder (str or "
                f"os.PathLike), got {type(resume_from).__name__}: {resume_from!r}"
            )
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.tuner: DynamicFineTuner | None = None
        self._stage = "new"  # -> "ready" (Trainer built) -> "training" -> "ended"
        self._first_step = 0
        self._unmatched: tuple[int, list[str]] | None = None
        self._flags_before: list[tuple[nn.Parameter, bool]] = []
        self._resumed = False

    @property
    def decisions(self) -> list[Decision]:
        """Every decision of the run so far (those before a resume included)."""
        return [] if self.tuner is None else list(self.tuner.scheduler.history)

    def _refuse_reuse(self, event: str) -> None:
        if self._stage in ("training", "ended") or (event == "init" and self._stage == "ready"):
            raise RuntimeError(
                "this DynamicFineTuningCallback already served a Trainer: its state belongs to "
                "that run. Create a new callback for every Trainer and every train() call"
            )

    # --- Trainer events -------------------------------------------------------------------

    def _checked_config(self, args: Any, model: nn.Module) -> FineTuneConfig:
        """The options with the monitor resolved, once the settings pass every refusal."""
        check_training_arguments(args, self.config)
        check_model(model, args)
        return resolve_monitor(self.config, self._explicit_monitor, self._explicit_mode, args)

    def on_init_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> Any:
        self._refuse_reuse("init")
        self._checked_config(args, model)
        frozen = 0
        for group in resolve_groups(model, self.backbone, self.groups):
            for name in group.parameter_names:
                parameter = model.get_parameter(name)
                frozen += not parameter.requires_grad
                parameter.requires_grad_(True)
        if frozen:
            logger.info(
                f"dynft: made {frozen} frozen backbone parameters trainable so that "
                "Trainer's optimizer holds them; the callback freezes the backbone itself"
            )
        self._stage = "ready"

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> Any:
        self._refuse_reuse("train")
        if state.is_hyper_param_search:
            raise ValueError(
                "DynamicFineTuningCallback does not support hyperparameter_search: every trial "
                "trains a new model, which needs a new callback"
            )
        config = self._checked_config(args, model)
        if config.max_epochs is not None:
            config.budget(planned_evaluations(args, state), unit="evaluations")
        _check_optimizer_holds_groups(model, optimizer, self.backbone, self.groups)
        saved = path = None
        if state.global_step > 0:
            path = self.resume_from or checkpoint_folder(args.output_dir, state.global_step)
            path = path / STATE_FILE
            saved = load_state(path, RESUME_REMEDY)
            check_resumed(
                saved,
                path,
                state=state,
                config=config,
                model=model,
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
            )
        self._flags_before = [(p, p.requires_grad) for p in model.parameters()]
        self._resumed = saved is not None
        with _undone_on_error(model) as built:
            tuner = DynamicFineTuner(
                model,
                optimizer,
                self.backbone,
                self.groups,
                config,
                restore_optimizer=self.restore_optimizer,
                lr_scheduler=lr_scheduler,
            )
            built.append(tuner)
            if saved is not None:
                tuner.load_state_dict(saved["tuner"])
        self.tuner = tuner
        self._first_step = state.global_step
        self._stage = "training"
        logger.info(
            f"dynft: monitoring {config.monitor} ({config.direction}), "
            f"{len(tuner.groups)} backbone groups:\n{tuner.group_table()}"
        )
        if saved is not None:
            logger.info(f"dynft: resumed from {path} after {tuner.scheduler.epoch} decisions")
            if tuner.scheduler.stopped:
                control.should_training_stop = True  # the saved run had already stopped
        return control

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> Any:
        tuner = self.tuner
        if self._stage != "training" or tuner is None or tuner.scheduler.stopped:
            return None
        if state.global_step == self._first_step:
            return None  # eval_on_start: before this train() call's first step, no decision
        self._check_rounds_decided(state.global_step)
        metrics = metrics or {}
        monitor = tuner.config.monitor
        if monitor not in metrics:
            # With several eval datasets each one reports separately (eval_<name>_...); the
            # round is checked once it is over.
            self._unmatched = (state.global_step, sorted(metrics))
            return None
        self._unmatched = None
        decision = tuner.step(metrics[monitor])
        self._record(decision, state)
        if decision.stop:
            control.should_training_stop = True
        return control

    def on_save(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> Any:
        if self._stage != "training" or self.tuner is None:
            return None
        self._check_rounds_decided(None)
        if args.should_save:
            save_state(
                checkpoint_folder(args.output_dir, state.global_step),
                global_step=state.global_step,
                config=self.tuner.config,
                tuner_state=self.tuner.state_dict(),
                decisions=self.tuner.scheduler.epoch,
                model=model,
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
            )
        return None

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._stage == "training":
            self._check_rounds_decided(None)
        return None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        if self._stage == "training" and self.tuner is not None and logs is not None:
            logs["dynft_unfrozen"] = self.tuner.scheduler.num_unfrozen
        return None

    def on_train_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> Any:
        tuner = self.tuner
        if self._stage != "training" or tuner is None:
            return None
        self._stage = "ended"
        self._check_rounds_decided(None)
        if not tuner.scheduler.stopped:
            self._record(tuner.finish(f"Trainer ended at step {state.global_step}"), state)
        elif tuner.config.restore_best_weights:
            # The stop decision restored the best already, but Trainer may have replaced the
            # weights since: load_best_model_at_end reloads its best checkpoint (with
            # transformers#43701 only partly), a resumed run that had stopped takes one step.
            tuner.restore_best()
        if (
            not tuner.config.restore_best_weights
            and args.load_best_model_at_end
            and state.best_model_checkpoint is not None
        ):
            folder = Path(state.best_model_checkpoint)
            keep = "Keep restore_best_weights=True: dynft then restores its best from memory"
            check_weights(
                load_state(folder / STATE_FILE, keep)["fingerprints"],
                model,
                folder,
                "load_best_model_at_end",
                keep,
            )
        return None

    # --- helpers --------------------------------------------------------------------------

    def _check_rounds_decided(self, global_step: int | None) -> None:
        """Raise if an evaluation round (of step < ``global_step``, or any when ``None``) ended
        without the monitored metric."""
        if self._unmatched is None:
            return
        step, keys = self._unmatched
        if global_step is not None and global_step == step:
            return
        monitor = self.tuner.config.monitor if self.tuner is not None else self.config.monitor
        if self.tuner is not None and self.tuner.scheduler.epoch == 0 and not self._resumed:
            self._undo_freeze()  # no decision was taken: the model goes back as it was given
        bare = monitor.removeprefix("eval_")
        renamed = f"eval_{bare.removeprefix('val_')}"
        hint = f" (Trainer names it {renamed!r})" if bare.startswith("val_") else ""
        raise KeyError(
            f"DynamicFineTuningCallback monitors {monitor!r}, but the evaluation at step {step} "
            f"reported only {keys}{hint}; return it from compute_metrics, or pass monitor= "
            "(with several eval datasets: 'eval_<name>_loss' ...) or set metric_for_best_model"
        )

    def _undo_freeze(self) -> None:
        assert self.tuner is not None
        self.tuner.batchnorm.remove()
        for parameter, requires_grad in self._flags_before:
            parameter.requires_grad_(requires_grad)
        self._stage = "ended"

    def _record(self, decision: Decision, state: Any) -> None:
        tuner = self.tuner
        assert tuner is not None
        head_rate = float(tuner.optimizer.param_groups[0]["lr"])
        entry = {
            "dynft_unfrozen": decision.num_unfrozen,
            "dynft_lr_factor": tuner.scheduler.lr_scale,
            "learning_rate": head_rate,
            "epoch": state.epoch,
            "step": state.global_step,
        }
        if decision.external_stop:
            entry["dynft_finished"] = 1
        else:
            entry[DECISION_KEY] = decision.epoch
            entry["dynft_value"] = decision.value
        state.log_history.append(entry)
        logger.info(f"dynft: {decision.reason}")


def _check_optimizer_holds_groups(
    model: nn.Module, optimizer: Any, backbone: nn.Module | str | None, groups: Any
) -> None:
    """Refuse an optimizer without some backbone parameters (a user's ``optimizers=``).

    The tuner would add them in param groups of their own at an unfreeze, and the checkpoints
    could not be resumed (see ``trainer_arguments``).
    """
    held = held_groups(optimizer)
    missing = [
        name
        for group in resolve_groups(model, backbone, groups)
        for name in group.parameter_names
        if id(model.get_parameter(name)) not in held
    ]
    if missing:
        raise ValueError(
            f"Trainer's optimizer lacks {len(missing)} backbone parameters ({missing[0]} ...): "
            "build it from model.parameters() (DynamicFineTuningCallback freezes the backbone "
            "itself), or add the callback when building the Trainer, not with add_callback "
            "after freezing the backbone by hand"
        )


@contextlib.contextmanager
def _undone_on_error(model: nn.Module) -> Iterator[list[DynamicFineTuner]]:
    """Put the model's trainability back if building or loading the tuner fails."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    built: list[DynamicFineTuner] = []
    try:
        yield built
    except BaseException:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])
        for tuner in built:
            tuner.batchnorm.remove()
        raise

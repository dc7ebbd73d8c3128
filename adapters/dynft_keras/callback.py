"""The Keras callback that carries out the decisions of the dynft_core scheduler."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import keras
import numpy as np

from dynft_core import Decision, FineTuneConfig, UnfreezeScheduler, carry_out, check_resume_point

from . import backup, resume
from .actions import KerasActions
from .backbone import Backbone, BackboneSpec, as_backbone, is_name_list
from .freezing import warn_zero_gamma
from .groups import GroupSpec, attached_batch_norm, resolve_groups
from .neighbours import callbacks_of_this_fit, check_order, follow_schedulers, release_scheduler
from .optimizer import FineTuningOptimizer
from .rates import configured_learning_rate
from .snapshot import WeightSnapshot
from .state import CallbackState, parse_state
from .table import group_table


class DynamicFineTuning(KerasActions, keras.callbacks.Callback):
    """Validation-driven dynamic fine-tuning (Algorithm 1) inside one ``model.fit``.

    On train begin every backbone group is frozen and ``model.optimizer`` becomes a
    [`FineTuningOptimizer`][dynft_keras.FineTuningOptimizer] built from the compiled one.
    After each epoch the monitored value goes to [`scheduler`][dynft_core.UnfreezeScheduler]
    and its [`Decision`][dynft_core.Decision] is carried out by
    [`carry_out()`][dynft_core.carry_out] through this callback's actions: snapshot the
    changeable weights; make groups trainable (each unfreeze gets its own optimizer, at
    ``unfrozen_lr_ratio`` x the head's rate); multiply the rates by ``lr_factor``; restore the
    best snapshot; stop. The restore itself waits until the next epoch begins (or training
    ends), so every callback sees the weights the epoch trained, under that epoch's number.

    However ``fit`` ends (this callback, ``EarlyStopping``, ``TerminateOnNaN``, the epoch
    budget), ``on_train_end`` calls [`finish()`][dynft_keras.DynamicFineTuning.finish]: the
    model ends on the best weights unless ``restore_best_weights=False``.

    ``logs["lr"]`` (the head's rate) and ``logs["dynft_unfrozen"]`` are added at every epoch
    end for the callbacks listed after this one.

    Args:
        backbone: The pretrained part of the fitted model: the base model (called as a layer,
            or flattened into the model with ``keras.Model(base.input, head(base.output))``),
            a list of its layers, or a list of layer names of the fitted model.
        groups: ``"layers"`` (one group per layer owning trainable weights,
            BatchNormalization excluded; the paper's counting), ``"blocks"`` (the blocks of
            the keras.applications families), or a list of lists of layers or layer names,
            shallowest first. Defaults to ``"layers"``.
        config: A [`FineTuneConfig`][dynft_core.FineTuneConfig]; ``options`` override its
            fields.
        verbose: 0 silent, 1 one line per unfreeze and at the end, 2 one line per epoch.
        backup_dir: Folder for dynft's resume files (see [`backup`][dynft_keras.backup]):
            the ``backup_dir`` of a ``BackupAndRestore`` listed *after* this callback.
            ``None`` (the default) writes nothing.
        **options: Fields of `FineTuneConfig`: ``patience``, ``step``, ``decay``,
            ``max_epochs`` (``None``: the ``epochs`` of ``fit``), ``min_delta``, ``monitor``,
            ``mode`` (``"auto"``), ``unfrozen_lr_ratio``, ``restore_best_weights``,
            ``train_batchnorm``.

    Raises:
        TypeError: An unknown option, a backbone of the wrong type, groups that are neither a
            string nor a list, or a backup_dir that is not a path.
        ValueError: An option out of range, bad groups.

    Attributes:
        config: The validated options.
        scheduler: The [`UnfreezeScheduler`][dynft_core.UnfreezeScheduler] (budget set when
            ``fit`` starts).
        groups: The resolved groups, lists of layers, index 0 next to the input.
        snapshot: The [`WeightSnapshot`][dynft_keras.WeightSnapshot] of the best epoch.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        groups: GroupSpec = "layers",
        config: FineTuneConfig | None = None,
        *,
        verbose: int = 1,
        backup_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.config = FineTuneConfig.from_options(config, **options)
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        self.verbose = verbose
        if backup_dir is not None and not isinstance(backup_dir, (str, os.PathLike)):
            raise TypeError(
                "backup_dir must be None or a folder path (str or os.PathLike), got "
                f"{type(backup_dir).__name__}: {backup_dir!r}"
            )
        self.backup_dir = backup_dir
        self._backbone_spec = backbone
        self._group_spec = groups
        self.backbone: Backbone | None = None
        self.groups: list[list[keras.layers.Layer]] | None = None
        self.scheduler: UnfreezeScheduler | None = None
        self._batch_norm: list[list[keras.layers.Layer]] = []
        if not is_name_list(backbone):  # names need the model: resolved in set_model
            self._resolve(None)
        self.snapshot = WeightSnapshot()
        self._optimizer: FineTuningOptimizer | None = None
        self._loaded: CallbackState | None = None
        self._loaded_by_set_state = False
        self._expected: resume.Expected | None = None
        self._pending: str | None = None
        self._verify_first_epoch = False
        self._schedulers: list[keras.callbacks.LearningRateScheduler] = []

    def _resolve(self, model: keras.Model | None) -> None:
        self.backbone = as_backbone(self._backbone_spec, model)
        self.groups = resolve_groups(self.backbone, self._group_spec)
        self._batch_norm = (
            attached_batch_norm(self.backbone, self.groups)
            if self.config.train_batchnorm
            else [[] for _ in self.groups]
        )
        self.scheduler = self.config.scheduler(len(self.groups), self.config.max_epochs)

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        if self.groups is None:
            self._resolve(model)

    def group_table(self) -> str:
        """The groups, one line each: index, layer names, parameter count, trainable/frozen."""
        groups, scheduler = self._ready()
        return group_table(groups, scheduler.num_unfrozen, self._batch_norm)

    def _ready(self) -> tuple[list[list[keras.layers.Layer]], UnfreezeScheduler]:
        if self.groups is None or self.scheduler is None:
            raise RuntimeError(
                "a backbone given as layer names is resolved when fit starts; call "
                "set_model(model) first"
            )
        return self.groups, self.scheduler

    # -- state -----------------------------------------------------------------

    def _state(self) -> CallbackState:
        _, scheduler = self._ready()
        learning_rate, steps = None, 0
        if self._optimizer is not None:
            learning_rate = configured_learning_rate(self._optimizer)
            steps = int(keras.ops.convert_to_numpy(self._optimizer._iterations))
        elif self._loaded is not None:
            learning_rate, steps = self._loaded.learning_rate, self._loaded.train_steps
        return CallbackState(scheduler, learning_rate, steps, self.snapshot.epoch, self._pending)

    def get_state(self) -> dict[str, Any]:
        """JSON-plain state: options, scheduler, base learning rate, steps, pending restore.

        The snapshot's arrays are not included (see ``backup_dir``).
        """
        return self._state().to_dict(self.config)

    def set_state(self, state: dict[str, Any]) -> None:
        """Load a state from [`get_state`][dynft_keras.DynamicFineTuning.get_state].

        The next ``fit`` continues from it: it must start at the saved epoch
        (``fit(initial_epoch=...)``); the trainable set, the learning rate and the step count
        are restored at train begin. The best snapshot's arrays come back only through
        ``backup_dir``. Every field is checked first: a state that fails changes nothing.

        Raises:
            ValueError: The state is invalid or was saved with other options or groups (the
                message names the key).
        """
        groups, _ = self._ready()
        loaded = parse_state(state, self.config, len(groups))
        self._adopt(loaded)
        self._loaded_by_set_state = True
        epoch = loaded.scheduler.epoch
        self._expected = resume.Expected(
            epoch, None, "fit(initial_epoch=...)",
            f"pass initial_epoch={epoch} to fit so it continues after the saved epoch",
        )  # fmt: skip

    def _adopt(self, loaded: CallbackState) -> None:
        self.scheduler = loaded.scheduler
        self._loaded = loaded
        self._pending = loaded.pending_restore
        self.snapshot = WeightSnapshot()

    # -- Keras hooks -----------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if not model.built:
            raise ValueError(
                f"model {model.name!r} must be built before fit so that its backbone "
                "can be frozen; call it on a batch or give it an Input"
            )
        groups, scheduler = self._ready()
        assert self.backbone is not None
        self.backbone.check_in(model)
        if getattr(model, "optimizer", None) is None:
            raise ValueError("compile the model before fit: DynamicFineTuning needs its optimizer")
        neighbours = callbacks_of_this_fit(self)
        if neighbours is not None:
            check_order(self, neighbours, self.backup_dir)
        if self.backup_dir is not None:
            self._load_backup()
            scheduler = self.scheduler
        if scheduler.stopped:
            raise RuntimeError(
                f"this DynamicFineTuning already stopped at epoch {scheduler.epoch}; "
                "create a new callback to train again"
            )
        epochs = int(self.params["epochs"])
        if scheduler.epoch == 0 and self._loaded is None:
            self.scheduler = self.config.scheduler(len(groups), self.config.budget(epochs))
        else:
            dataclasses.replace(self.config, max_epochs=scheduler.max_epochs).budget(epochs)
        if self._expected is None and scheduler.epoch > 0:  # fit raised, the callback goes on
            self._expected = resume.Expected(
                scheduler.epoch, None, "fit(initial_epoch=...)",
                f"pass initial_epoch={scheduler.epoch} to fit to go on with this callback, or "
                "create a new one to start over",
            )  # fmt: skip
        self._install_optimizer()
        if neighbours is not None:
            assert self._optimizer is not None
            self._schedulers = follow_schedulers(neighbours, self._optimizer)
        warn_zero_gamma(self.backbone, self._batch_norm)
        if self.backup_dir is not None and self._loaded is None:
            self._save_backup()  # epoch 0: what a kill before the first epoch end resumes
        self._verify_first_epoch = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._verify_first_epoch:
            self._verify_resume_point(epoch)
        self._carry_out_pending_restore()

    def _verify_resume_point(self, epoch: int) -> None:
        self._verify_first_epoch = False
        assert self._optimizer is not None and self.scheduler is not None
        expected, self._expected = self._expected, None
        if expected is not None:
            steps = int(keras.ops.convert_to_numpy(self._optimizer._iterations))
            resume.verify(expected, epoch, steps)
        elif self.scheduler.epoch == 0 and epoch > 0 and self.model._initial_epoch is not None:
            check_resume_point(
                0, epoch, resume.FRAMEWORK,
                "DynamicFineTuning found no backup of its own: give it backup_dir= (the folder "
                "of BackupAndRestore) from the first run on, or delete BackupAndRestore's "
                "folder to start over",
            )  # fmt: skip

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        scheduler = self.scheduler
        assert scheduler is not None
        if self.model.optimizer is not self._optimizer:
            raise RuntimeError(
                "model.optimizer was replaced during fit; DynamicFineTuning unfreezes and "
                "decays through the optimizer it installed at train begin. Compile before fit"
            )
        if logs is None or self.config.monitor not in logs:
            present = sorted(logs) if logs else []
            if scheduler.epoch == 0 and self._loaded is None:
                self._undo_install()  # no decision was taken: the model goes back as given
            raise KeyError(
                f"DynamicFineTuning monitors {self.config.monitor!r}, but the epoch logs only "
                f"have {present}; pass validation_data to fit (and validation_freq=1) or "
                "choose monitor= among these keys"
            )
        decision = scheduler.step(logs[self.config.monitor])
        carry_out(decision, self, self.config.unfrozen_lr_ratio)
        assert self._optimizer is not None
        logs["lr"] = self._optimizer.learning_rates()["head"]
        logs["dynft_unfrozen"] = decision.num_unfrozen
        if self.verbose == 2 or (self.verbose == 1 and (decision.unfroze or decision.stop)):
            print(f"DynamicFineTuning: {decision.reason}")
        if self.backup_dir is not None:
            self._save_backup()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for scheduler in self._schedulers:
            release_scheduler(scheduler)
        if self._verify_first_epoch and self.model._initial_epoch is not None:
            self._verify_resume_point(self.model._initial_epoch)  # fit ran no epoch
        self.finish("fit ended")
        # Training finished: a later fit must not resume from these files.
        if self.backup_dir is not None:
            backup.remove_all(self.backup_dir)

    def finish(self, why: str = "training ended") -> Decision:
        """Close the run: end on the best weights (unless ``restore_best_weights=False``).

        ``on_train_end`` calls it. Keras skips ``on_train_end`` when ``fit`` raises (a
        ``KeyboardInterrupt`` included): call it yourself then. Calling it again does nothing.

        Returns:
            The closing [`Decision`][dynft_core.Decision].
        """
        _, scheduler = self._ready()
        if self._optimizer is None:
            raise RuntimeError("finish() closes a fit, and no fit has started with this callback")
        already = scheduler.stopped
        decision = scheduler.finish(why)
        carry_out(decision, self, self.config.unfrozen_lr_ratio)
        self._carry_out_pending_restore()
        if self.verbose and not already:
            print(f"DynamicFineTuning: {decision.reason}")
        if not all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in self.model.weights):
            warnings.warn(
                "dynft: the model's weights are not all finite at the end of training (no "
                "finite best epoch to restore); lower the learning rate",
                RuntimeWarning,
                stacklevel=2,
            )
        return decision

    # -- resume files ----------------------------------------------------------

    def _save_backup(self) -> None:
        assert self.backup_dir is not None and self.scheduler is not None
        arrays = {} if self.snapshot.empty else self.snapshot.to_arrays(self.model)
        backup.save(self.backup_dir, self.get_state(), arrays, self.scheduler.epoch)

    def _load_backup(self) -> None:
        assert self.backup_dir is not None and self.groups is not None
        point, expected = resume.choose(self.backup_dir)
        if point is None:
            return
        if self.model._initial_epoch is not None:
            raise RuntimeError(
                "BackupAndRestore restored the model before DynamicFineTuning set up the "
                "saved trainable layers and optimizer; list DynamicFineTuning before "
                "BackupAndRestore in callbacks"
            )
        try:
            loaded = parse_state(point.state, self.config, len(self.groups))
        except ValueError as err:
            raise backup.BackupError(f"{point.path}: {err}") from None
        if (loaded.snapshot_epoch is not None) != bool(point.arrays):
            raise backup.BackupError(
                f"{point.path}: the state names a snapshot of epoch {loaded.snapshot_epoch} "
                f"but the file holds {len(point.arrays)} arrays"
            )
        self._adopt(loaded)
        if loaded.snapshot_epoch is not None:
            self.snapshot.load_arrays(self.model, point.arrays, loaded.snapshot_epoch)
        self._expected = expected

"""The Keras callback that carries out the decisions of :class:`dynft_core.UnfreezeScheduler`."""

from __future__ import annotations

import os
import warnings
from typing import Any

import keras

from dynft_core import Decision, UnfreezeScheduler

from . import backup
from .freezing import apply_trainable, group_variables
from .groups import GroupSpec, check_backbone_in_model, resolve_groups
from .optimizer import (
    configured_learning_rate,
    current_learning_rate,
    deserialize_learning_rate,
    replace_optimizer,
    scaled_learning_rate,
    serialize_learning_rate,
)
from .snapshot import WeightSnapshot, changeable_variables

STATE_VERSION = 1


class DynamicFineTuning(keras.callbacks.Callback):
    """Validation-driven dynamic fine-tuning (Algorithm 1) inside one ``model.fit``.

    On train begin every backbone group is frozen; the head keeps the
    ``trainable`` flags it was compiled with. After each epoch the monitored value goes to
    :attr:`scheduler`, and its :class:`~dynft_core.Decision` is applied in this
    order: snapshot the changeable weights if ``improved``; make the
    ``newly_unfrozen`` groups trainable; multiply the learning rate by
    ``lr_factor``; restore the best snapshot if ``restore_best``; set
    ``model.stop_training`` if ``stop``. Every BatchNormalization layer of the
    backbone stays frozen (inference mode) for the whole run.

    Each change of the trainable set replaces ``model.optimizer`` by a fresh
    optimizer of the same class and configuration (slots such as Adam moments
    start from zero) and rebuilds the train/test/predict functions, so the
    change takes effect in the running ``fit`` on TensorFlow, torch and JAX.

    ``logs["lr"]`` and ``logs["dynft_unfrozen"]`` are added at every epoch end
    for the callbacks listed after this one (``History`` always comes last).

    Args:
        backbone: The pretrained sub-model inside the fitted model.
        groups: ``"layers"`` (one group per layer owning trainable weights,
            BatchNormalization excluded; the paper's counting), ``"blocks"``
            (the blocks of the keras.applications families), or a list of
            lists of layers or layer names, shallowest first. Defaults to
            ``"layers"``.
        patience: Epochs without improvement before an unfreeze. Defaults to 5.
        step: Groups unfrozen at a time. Defaults to 3.
        decay: Learning-rate decay per unfreeze, ``0 <= decay < 1``. Defaults to 0.1.
        max_epochs: Epoch budget of the scheduler; ``None`` (the default)
            takes the ``epochs`` argument of ``fit``.
        monitor: Key of the epoch logs to monitor. Defaults to ``"val_loss"``.
        mode: ``"min"`` or ``"max"``. Defaults to ``"min"``.
        min_delta: Minimum change counted as an improvement. Defaults to 0.0.
        verbose: 0 silent, 1 one line per unfreeze and at the stop, 2 one line
            per epoch. Defaults to 1.
        backup_dir: Folder for the resume files (see :mod:`dynft_keras.backup`);
            pass the ``backup_dir`` of a ``BackupAndRestore`` listed *after*
            this callback. ``None`` (the default) writes nothing.

    Attributes:
        scheduler: The :class:`~dynft_core.UnfreezeScheduler` (``None`` until
            ``fit`` starts when ``max_epochs`` is ``None``).
        groups: The resolved groups, lists of layers, index 0 next to the input.
        snapshot: The :class:`~dynft_keras.snapshot.WeightSnapshot` of the best epoch.
    """

    def __init__(
        self,
        backbone: keras.layers.Layer,
        groups: GroupSpec = "layers",
        patience: int = 5,
        step: int = 3,
        decay: float = 0.1,
        max_epochs: int | None = None,
        monitor: str = "val_loss",
        mode: str = "min",
        min_delta: float = 0.0,
        verbose: int = 1,
        backup_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, keras.layers.Layer):
            raise TypeError(f"backbone must be a keras Layer or Model, got {backbone!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        self.backbone = backbone
        self.groups = resolve_groups(backbone, groups)
        self.patience = patience
        self.step = step
        self.decay = decay
        self.max_epochs = max_epochs
        self.monitor = monitor
        self.mode = mode
        self.min_delta = min_delta
        self.verbose = verbose
        self.backup_dir = backup_dir
        # Built now even without a budget so that bad arguments fail here, not in fit.
        scheduler = self._new_scheduler(max_epochs if max_epochs is not None else 1)
        self.scheduler: UnfreezeScheduler | None = scheduler if max_epochs is not None else None
        self.snapshot = WeightSnapshot()
        self._resume_learning_rate: Any = None
        self._snapshot_changed = False

    def _new_scheduler(self, max_epochs: int) -> UnfreezeScheduler:
        return UnfreezeScheduler(
            num_groups=len(self.groups),
            patience=self.patience,
            step=self.step,
            decay=self.decay,
            max_epochs=max_epochs,
            min_delta=self.min_delta,
            mode=self.mode,
        )

    # -- state -----------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-plain state: the scheduler, the live learning rate and the snapshot's epoch.

        The snapshot's arrays are not included (see ``backup_dir``).

        Raises:
            RuntimeError: There is no scheduler yet (``max_epochs=None`` and
                ``fit`` has not started).
        """
        if self.scheduler is None:
            raise RuntimeError(
                "the scheduler is created when fit starts (max_epochs=None); call "
                "get_state() during or after fit, or pass max_epochs"
            )
        learning_rate = None
        if self.model is not None and getattr(self.model, "optimizer", None) is not None:
            learning_rate = serialize_learning_rate(configured_learning_rate(self.model.optimizer))
        return {
            "version": STATE_VERSION,
            "scheduler": self.scheduler.state_dict(),
            "learning_rate": learning_rate,
            "snapshot_epoch": self.snapshot.epoch,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Load a state from :meth:`get_state`; the next ``fit`` continues from it.

        The learning rate in the state replaces the compiled one when ``fit``
        starts. The best snapshot's arrays come back only through ``backup_dir``.

        Raises:
            ValueError: Another state version, or a scheduler configuration
                that differs from this callback's arguments.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"unsupported DynamicFineTuning state version {state.get('version')!r}; "
                f"expected {STATE_VERSION}"
            )
        saved = state["scheduler"]
        scheduler = self.scheduler or self._new_scheduler(int(saved["config"]["max_epochs"]))
        scheduler.load_state_dict(saved)
        self.scheduler = scheduler
        if state.get("learning_rate") is not None:
            self._resume_learning_rate = deserialize_learning_rate(state["learning_rate"])

    # -- Keras hooks -----------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if not model.built:
            raise ValueError(
                f"model {model.name!r} must be built before fit so that its backbone "
                "can be frozen; call it on a batch or give it an Input"
            )
        check_backbone_in_model(model, self.backbone)
        if self.backup_dir is not None:
            self._load_backup()
        if self.scheduler is None:
            self.scheduler = self._new_scheduler(int(self.params["epochs"]))
        if self.scheduler.stopped:
            raise RuntimeError(
                f"this DynamicFineTuning already stopped at epoch {self.scheduler.epoch}; "
                "create a new callback to train again"
            )
        apply_trainable(self.backbone, self.groups, self.scheduler.num_unfrozen)
        if self._resume_learning_rate is not None:
            learning_rate = self._resume_learning_rate
            self._resume_learning_rate = None
        else:
            learning_rate = scaled_learning_rate(model.optimizer, 1.0)
        replace_optimizer(model, learning_rate)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None or self.monitor not in logs:
            present = sorted(logs) if logs else []
            raise KeyError(
                f"DynamicFineTuning monitors {self.monitor!r}, but the epoch logs only "
                f"have {present}; pass validation_data to fit (and validation_freq=1) or "
                "choose monitor= among these keys"
            )
        assert self.scheduler is not None  # created in on_train_begin
        decision = self.scheduler.step(logs[self.monitor])
        self.apply(decision)
        logs["lr"] = current_learning_rate(self.model.optimizer)
        logs["dynft_unfrozen"] = decision.num_unfrozen
        if self.verbose == 2 or (self.verbose == 1 and (decision.unfroze or decision.stop)):
            print(f"DynamicFineTuning: {decision.reason}")
        if self.backup_dir is not None:
            self._save_backup()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # Training finished normally: a later fit must not resume from it.
        if self.backup_dir is not None:
            backup.remove_backup(self.backup_dir)

    # -- decisions -------------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Carry out one decision on ``self.model`` (called by ``on_epoch_end``).

        Args:
            decision: The scheduler's decision for the epoch just finished.
        """
        model = self.model
        if decision.improved:
            self.snapshot.capture(changeable_variables(model), decision.epoch)
            self._snapshot_changed = True
        if decision.newly_unfrozen:
            if not self.snapshot.empty:
                for index in decision.newly_unfrozen:
                    self.snapshot.extend(group_variables(self.groups[index]))
                self._snapshot_changed = True
            apply_trainable(self.backbone, self.groups, decision.num_unfrozen)
        if decision.newly_unfrozen or decision.lr_factor != 1.0:
            replace_optimizer(model, scaled_learning_rate(model.optimizer, decision.lr_factor))
        if decision.restore_best:
            if self.snapshot.empty:
                best_epoch = self.scheduler.best_epoch if self.scheduler else None
                warnings.warn(
                    f"the best weights of epoch {best_epoch} are not in memory (state "
                    "resumed without backup_dir); keeping the current weights",
                    stacklevel=2,
                )
            else:
                self.snapshot.restore()
        if decision.stop:
            model.stop_training = True

    # -- resume files ----------------------------------------------------------

    def _save_backup(self) -> None:
        assert self.backup_dir is not None
        if self._snapshot_changed and self.snapshot.epoch is not None:
            backup.save_snapshot(
                self.backup_dir, self.snapshot.to_arrays(self.model), self.snapshot.epoch
            )
            self._snapshot_changed = False
        backup.save_state(self.backup_dir, self.get_state())

    def _load_backup(self) -> None:
        assert self.backup_dir is not None
        state = backup.load_state(self.backup_dir)
        if state is None:
            return
        if getattr(self.model, "_initial_epoch", None) is not None:
            raise RuntimeError(
                "BackupAndRestore restored the model before DynamicFineTuning set up the "
                "saved trainable layers and optimizer; list DynamicFineTuning before "
                "BackupAndRestore in callbacks"
            )
        self.set_state(state)
        saved = backup.load_snapshot(self.backup_dir)
        if saved is not None:
            arrays, epoch = saved
            if epoch != state["snapshot_epoch"]:
                raise ValueError(
                    f"{backup.SNAPSHOT_FILE} holds epoch {epoch} but {backup.STATE_FILE} "
                    f"expects epoch {state['snapshot_epoch']}; the backup is inconsistent"
                )
            self.snapshot.load_arrays(self.model, arrays, epoch)

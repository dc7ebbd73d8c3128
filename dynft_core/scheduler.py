"""Algorithm 1 of the paper as a framework-free state machine."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

from .decision import Decision
from .plateau import PlateauMonitor, as_metric
from .state_check import STATE_VERSION, load_checked_state


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= ``minimum`` (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool`` (``"false"``, ``0`` and ``None`` are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_decay(decay: object) -> float:
    """Return ``decay`` as a float if ``0 <= decay < 1``."""
    if (
        isinstance(decay, bool)
        or not isinstance(decay, numbers.Real)
        or not 0.0 <= float(decay) < 1.0
    ):
        raise ValueError(f"decay must be a number with 0 <= decay < 1, got {decay!r}")
    return float(decay)


class UnfreezeScheduler:
    """Decides, epoch by epoch, when to unfreeze which backbone groups.

    The backbone is split into ``num_groups`` ordered groups, index 0 next to
    the input and ``num_groups - 1`` next to the head. Training starts with all
    groups frozen. Call ``step()`` once per epoch with the validation value;
    after ``patience`` epochs without improvement the next ``step`` deepest
    groups are unfrozen (``m = min(m + step, L)``), the learning rate is to be
    multiplied by ``1 - decay`` and the best weights restored. A plateau with
    every group unfrozen, or reaching ``max_epochs``, stops training; the final
    model is the best-validation one. When something else ends training (another
    callback, a framework budget, a loop that simply ends),
    [`finish()`][dynft_core.UnfreezeScheduler.finish] takes the closing decision, so the
    run still ends on the best weights.

    A non-finite value (a diverged epoch) is a miss like any other, and the best
    weights are restored right away (``Decision.diverged``), so training never
    continues from NaN weights when a best state exists.

    Args:
        num_groups: Number of backbone groups ``L`` (>= 1).
        patience: Epochs without improvement before an unfreeze or stop
            (>= 1). Defaults to 5.
        step: Groups unfrozen per unfreeze, ``k`` (>= 1). Defaults to 3.
        decay: Learning-rate decay per unfreeze, ``0 <= decay < 1``.
            Defaults to 0.1.
        max_epochs: Epoch budget ``n`` (>= 1), or ``None`` for no budget (training
            then ends at the final plateau or at
            [`finish()`][dynft_core.UnfreezeScheduler.finish]). Defaults to 100.
        min_delta: Minimum change that counts as an improvement (>= 0).
            Defaults to 0.
        mode: ``"min"`` (e.g. a loss, the default) or ``"max"`` (e.g. accuracy).
        restore_best_weights: End on the best weights (Algorithm 1, the default). ``False``
            keeps the last weights at the end (the rollbacks at an unfreeze still happen).

    Attributes:
        num_groups: ``L``.
        num_unfrozen: ``m``, the number of unfrozen (deepest) groups.
        epoch: Number of epochs stepped so far.
        stopped: Whether a decision has said ``stop``.
        history: Every ``Decision``, in order.
    """

    def __init__(
        self,
        num_groups: int,
        patience: int = 5,
        step: int = 3,
        decay: float = 0.1,
        max_epochs: int | None = 100,
        min_delta: float = 0.0,
        mode: str = "min",
        restore_best_weights: bool = True,
    ) -> None:
        self.num_groups = check_int("num_groups", num_groups, 1)
        self.patience = check_int("patience", patience, 1)
        self.step_size = check_int("step", step, 1)
        self.decay = check_decay(decay)
        self.max_epochs = None if max_epochs is None else check_int("max_epochs", max_epochs, 1)
        self.restore_best_weights = check_bool("restore_best_weights", restore_best_weights)
        self._monitor = PlateauMonitor(mode=mode, min_delta=min_delta)
        self.num_unfrozen = 0
        self.num_unfreezes = 0
        self.epoch = 0
        self.stopped = False
        self.history: list[Decision] = []

    @property
    def mode(self) -> str:
        """``"min"`` if lower values are better, ``"max"`` if higher ones are."""
        return self._monitor.mode

    @property
    def min_delta(self) -> float:
        """Minimum change over the best that counts as an improvement."""
        return self._monitor.min_delta

    @property
    def best(self) -> float:
        """Best finite value seen (``inf`` in mode "min", ``-inf`` in "max", before any)."""
        return self._monitor.best

    @property
    def best_epoch(self) -> int | None:
        """Epoch (1-based) of ``best``, or ``None`` before any finite value."""
        return self._monitor.best_epoch

    @property
    def wait(self) -> int:
        """Non-improving epochs since the last improvement or unfreeze."""
        return self._monitor.wait

    @property
    def lr_scale(self) -> float:
        """Cumulative learning-rate factor, ``(1 - decay) ** number_of_unfreezes``."""
        return (1.0 - self.decay) ** self.num_unfreezes

    @property
    def trainable_groups(self) -> tuple[int, ...]:
        """Indices of the unfrozen groups: the ``m`` deepest, ascending."""
        return tuple(range(self.num_groups - self.num_unfrozen, self.num_groups))

    def step(self, value: Any) -> Decision:
        """Record the validation value of the epoch just finished and decide.

        Args:
            value: The monitored value (a real number; NaN/inf allowed and
                treated as no improvement).

        Returns:
            The ``Decision`` for this epoch (also appended to ``history``).

        Raises:
            RuntimeError: A previous decision already stopped training.
            TypeError: ``value`` is not a real number.
        """
        if self.stopped:
            raise RuntimeError(
                f"step() called after the scheduler stopped at epoch {self.epoch}; "
                "create a new UnfreezeScheduler to train again"
            )
        value = as_metric(value)
        self.epoch += 1
        previous_best = self.best
        improved = self._monitor.update(value, self.epoch)
        diverged = not math.isfinite(value)

        newly_unfrozen: tuple[int, ...] = ()
        lr_factor = 1.0
        stop = False
        if self.wait >= self.patience:
            if self.num_unfrozen < self.num_groups:
                before = self.num_unfrozen
                self.num_unfrozen = min(before + self.step_size, self.num_groups)
                newly_unfrozen = tuple(
                    range(self.num_groups - self.num_unfrozen, self.num_groups - before)
                )
                self.num_unfreezes += 1
                lr_factor = 1.0 - self.decay
                self._monitor.reset_wait()
            else:
                stop = True
        plateau_stop = stop
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            stop = True
        self.stopped = stop
        has_best = self.best_epoch is not None
        restore = bool(newly_unfrozen) or diverged or (stop and self.restore_best_weights)

        decision = Decision(
            epoch=self.epoch,
            value=value,
            improved=improved,
            num_unfrozen=self.num_unfrozen,
            newly_unfrozen=newly_unfrozen,
            trainable_groups=self.trainable_groups,
            lr_factor=lr_factor,
            restore_best=restore and has_best,
            stop=stop,
            reason=self._reason(value, previous_best, improved, newly_unfrozen, plateau_stop),
            diverged=diverged,
        )
        self.history.append(decision)
        return decision

    def finish(self, why: str = "training ended") -> Decision:
        """Close a run that something other than this scheduler ended.

        Call it once training is over for good: another callback stopped it, the framework's
        epoch or step budget ran out, the loop simply ended. The returned decision restores the
        best weights (unless ``restore_best_weights=False``) and is recorded in ``history``;
        afterwards the scheduler is stopped. On a scheduler that already stopped itself (whose
        stop decision restored the best already) it returns a decision with nothing to do and
        records nothing, so calling it twice is harmless.

        Args:
            why: What ended training, for ``reason`` (e.g. ``"fit ended after 6 epochs"``).

        Returns:
            A ``Decision`` with ``stop=True`` and ``external_stop=True``; its ``epoch`` is the
            last epoch stepped (no new epoch is counted) and its ``value`` is NaN.

        Raises:
            TypeError: ``why`` is not a string (nothing is changed).
        """
        if not isinstance(why, str):
            raise TypeError(f"why must be a string saying what ended training, got {why!r}")
        has_best = self.best_epoch is not None
        already_stopped = self.stopped
        if already_stopped:
            restore = False
            reason = f"{why}: the scheduler had already stopped at epoch {self.epoch}"
        else:
            self.stopped = True
            restore = self.restore_best_weights and has_best
            if restore:
                outcome = f"restored best of epoch {self.best_epoch}"
            elif has_best:
                outcome = "kept the last weights (restore_best_weights=False)"
            else:
                outcome = (
                    "no finite validation value, no best to restore: the model holds the "
                    "last weights"
                )
                warnings.warn(f"dynft: {why}: {outcome}", RuntimeWarning, stacklevel=2)
            budget = "" if self.max_epochs is None else f" of max_epochs={self.max_epochs}"
            reason = f"{why} after {self.epoch}{budget} epochs: {outcome}"
        decision = Decision(
            epoch=self.epoch,
            value=math.nan,
            improved=False,
            num_unfrozen=self.num_unfrozen,
            newly_unfrozen=(),
            trainable_groups=self.trainable_groups,
            lr_factor=1.0,
            restore_best=restore,
            stop=True,
            reason=reason,
            external_stop=True,
        )
        if not already_stopped:
            self.history.append(decision)
        return decision

    def _reason(
        self,
        value: float,
        previous_best: float,
        improved: bool,
        newly_unfrozen: tuple[int, ...],
        plateau_stop: bool,
    ) -> str:
        parts = [f"epoch {self.epoch}: value {value:.6g}"]
        if improved:
            if math.isfinite(previous_best):
                parts.append(f"improved on best {previous_best:.6g}")
            else:
                parts.append("is the first best")
        else:
            if math.isfinite(value):
                parts.append(f"no improvement on best {self.best:.6g}")
            else:
                parts.append("is not finite, no improvement")
            # after an unfreeze the counter is already reset, so the count would mislead
            if not newly_unfrozen and not plateau_stop:
                parts[-1] += f" ({self.wait}/{self.patience})"
        has_best = self.best_epoch is not None
        restored = f"restored best of epoch {self.best_epoch}" if has_best else "no best to restore"
        if not math.isfinite(value) and not newly_unfrozen and not self.stopped:
            parts.append(
                f"diverged: {restored}"
                if has_best
                else "diverged with no best to restore: the weights may not be finite"
            )
        if self.restore_best_weights:
            final = (
                f"stop with the best of epoch {self.best_epoch}"
                if has_best
                else ("stop, no best to restore")
            )
        else:
            final = "stop with the last weights (restore_best_weights=False)"
        if newly_unfrozen:
            span = (
                f"group {newly_unfrozen[0]}"
                if len(newly_unfrozen) == 1
                else f"groups {newly_unfrozen[0]}-{newly_unfrozen[-1]}"
            )
            parts.append(
                f"plateau for {self.patience} epochs: unfroze {span} "
                f"({self.num_unfrozen}/{self.num_groups} trainable), "
                f"lr x{1.0 - self.decay:.6g}, {restored}"
            )
        if plateau_stop:
            parts.append(
                f"plateau for {self.patience} epochs with all {self.num_groups} groups "
                f"unfrozen: {final}"
            )
        elif self.stopped:
            parts.append(f"epoch budget of {self.max_epochs} reached: {final}")
        return "; ".join(parts)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-plain."""
        return {
            "num_groups": self.num_groups,
            "patience": self.patience,
            "step": self.step_size,
            "decay": self.decay,
            "max_epochs": self.max_epochs,
            "min_delta": self.min_delta,
            "mode": self.mode,
            "restore_best_weights": self.restore_best_weights,
        }

    def state_dict(self) -> dict[str, Any]:
        """The whole state as JSON-plain data (``json.dumps`` works on it)."""
        return {
            "version": STATE_VERSION,
            "config": self.config(),
            "monitor": self._monitor.state_dict(),
            "num_unfrozen": self.num_unfrozen,
            "num_unfreezes": self.num_unfreezes,
            "epoch": self.epoch,
            "stopped": self.stopped,
            "history": [d.to_dict() for d in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by ``state_dict()`` of an equally configured scheduler.

        Every field is checked, against its type and against the others, before anything is
        changed: a state that fails leaves the scheduler exactly as it was.

        Raises:
            ValueError: The state is of another version, was saved with a different
                configuration, or a field is missing, of the wrong type or inconsistent with
                the rest (the message names the key).
        """
        loaded = load_checked_state(state, self.config())
        (
            self._monitor,
            self.num_unfrozen,
            self.num_unfreezes,
            self.epoch,
            self.stopped,
            self.history,
        ) = loaded

    def __repr__(self) -> str:
        budget = "None" if self.max_epochs is None else str(self.max_epochs)
        return (
            f"UnfreezeScheduler(num_groups={self.num_groups}, patience={self.patience}, "
            f"step={self.step_size}, decay={self.decay}, max_epochs={budget}, "
            f"min_delta={self.min_delta}, mode={self.mode!r}; epoch={self.epoch}, "
            f"num_unfrozen={self.num_unfrozen}, best={self.best:.6g}, wait={self.wait})"
        )

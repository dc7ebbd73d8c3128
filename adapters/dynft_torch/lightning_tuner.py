"""The tuner as the Lightning callback drives it: rollbacks wait for the next training batch.

Lightning writes checkpoints after the hook that takes the decision (``ModelCheckpoint`` always
runs last, at the validation end or the train epoch end). Were the best weights restored at the
decision, a checkpoint named after that epoch and its validation value would hold the weights of
an earlier epoch. So a restore is recorded as pending and carried out right before the next
training batch, or when the run ends: every checkpoint holds the weights its validation value
was measured on, plus the pending restore (in the callback state), which a resumed run carries
out before it trains.

Lightning (2.2 and later) keeps the train/eval mode of every submodule as it finds it, restoring
it after each validation; nothing calls ``model.train()`` each epoch as a plain loop does. So
with ``train_batchnorm=True`` the BatchNorm layers of unfrozen groups, kept in eval mode while
frozen, are put back in training mode before the next batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dynft_core import Decision

from .freezing import backbone_batchnorms
from .tuner import DynamicFineTuner

PENDING_RESTORES = (None, "rollback", "diverged")


class LightningTuner(DynamicFineTuner):
    """A [`DynamicFineTuner`][dynft_torch.DynamicFineTuner] whose restore is deferred.

    Args:
        stop: Called for a decision that says ``stop`` (sets ``trainer.should_stop``).
        *args: As for ``DynamicFineTuner``.
        **kwargs: As for ``DynamicFineTuner``.

    Attributes:
        pending_restore: ``None``, ``"rollback"`` or ``"diverged"`` (the restore also resets
            the optimizer state, unless ``restore_optimizer``).
    """

    def __init__(self, stop: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop = stop
        self.pending_restore: str | None = None
        self._batchnorm_released_for = 0  # num_unfrozen when released layers last got train()

    def restore_best(self, diverged: bool = False) -> None:
        """Record the restore; ``carry_out_pending_restore`` does it before the next batch."""
        if diverged or self.pending_restore == "diverged":
            self.pending_restore = "diverged"
        else:
            self.pending_restore = "rollback"

    def carry_out_pending_restore(self) -> None:
        """Restore the best state now if a decision asked for it (otherwise nothing)."""
        if self.pending_restore is None:
            return
        diverged, self.pending_restore = self.pending_restore == "diverged", None
        super().restore_best(diverged)
        # The restore rewrote the weights in place without an optimizer step: the next step()
        # must not take that for another optimizer training the model.
        self._watch.mark(self._trainable())

    def before_training_batch(self) -> None:
        """Carry out a pending restore; put released BatchNorm layers in training mode."""
        self.carry_out_pending_restore()
        unfrozen = self.scheduler.num_unfrozen
        if self.config.train_batchnorm and self._batchnorm_released_for != unfrozen:
            groups = [self.groups[i] for i in self.scheduler.trainable_groups]
            for layer in backbone_batchnorms(self.model, groups).values():
                layer.train(self.model.training)
            self._batchnorm_released_for = unfrozen

    def stop_training(self) -> None:
        """End the Trainer's fit after this validation."""
        self._stop()

    def finish(self, why: str = "training ended") -> Decision:
        """Close the run and carry out any pending restore: the model ends on the best weights
        (unless ``restore_best_weights=False``)."""
        decision = super().finish(why)
        self.carry_out_pending_restore()
        return decision

"""The one order in which a [`Decision`][dynft_core.Decision] is carried out.

Adapters (Keras, PyTorch, Lightning, Hugging Face) implement
[`FineTuningActions`][dynft_core.FineTuningActions] for their framework and hand every decision to
[`carry_out()`][dynft_core.carry_out]; none of them re-derives the order, so a fix here reaches all
of them.
"""

from __future__ import annotations

import warnings
from typing import Protocol

from .decision import Decision


class FineTuningActions(Protocol):
    """What an adapter must be able to do; [`carry_out()`][dynft_core.carry_out] calls it."""

    def capture_best(self) -> None:
        """Snapshot everything that can change (weights, and optimizer state if kept)."""

    def unfreeze(self, groups: tuple[int, ...], lr_ratio: float) -> None:
        """Make ``groups`` trainable and give them ``lr_ratio`` x the head's current rate."""

    def scale_learning_rate(self, factor: float) -> None:
        """Multiply every learning rate (and every schedule's base) by ``factor``."""

    def restore_best(self, diverged: bool) -> None:
        """Load the best snapshot; with ``diverged``, leave no non-finite optimizer state."""

    def stop_training(self) -> None:
        """Make the framework end training after this epoch."""


def carry_out(decision: Decision, actions: FineTuningActions, lr_ratio: float = 1.0) -> None:
    """Carry ``decision`` out through ``actions``.

    The order: snapshot if ``improved``; unfreeze the ``newly_unfrozen`` groups (at ``lr_ratio``
    of the head's rate); multiply the learning rate by ``lr_factor`` (the new groups included,
    so under Algorithm 1 the whole model ends at the decayed rate); restore the best snapshot;
    end training. Unfreezing comes before the restore so that the snapshot also covers the
    groups that become trainable; the learning rate is scaled before the restore because a
    restore never touches rates.

    Warns (``RuntimeWarning``) when a non-finite value has no best state to roll back to.
    """
    if decision.improved:
        actions.capture_best()
    if decision.newly_unfrozen:
        actions.unfreeze(decision.newly_unfrozen, lr_ratio)
    if decision.lr_factor != 1.0:
        actions.scale_learning_rate(decision.lr_factor)
    if decision.restore_best:
        actions.restore_best(decision.diverged)
    elif decision.diverged:
        warnings.warn(
            f"dynft: {decision.reason}. The model's weights or optimizer state may be NaN/inf "
            "and there is no earlier best state to roll back to; lower the learning rate",
            RuntimeWarning,
            stacklevel=2,
        )
    if decision.stop:
        actions.stop_training()


class ResumeMismatchError(RuntimeError):
    """dynft's saved state and the framework's checkpoint are not from the same moment."""


def check_resume_point(
    saved_epoch: int, framework_epoch: int, framework: str, recovery: str
) -> None:
    """Refuse to continue when dynft's state and the framework's checkpoint disagree.

    Both are written at the end of an epoch (or validation); a kill between the two writes, a
    fallback to an older checkpoint, or files from another run leave them at different points.
    Continuing would count epochs twice (or skip them) and unfreeze at the wrong time.

    Args:
        saved_epoch: Epochs (validations) dynft's saved scheduler has stepped.
        framework_epoch: Epochs (validations) completed in the checkpoint the framework resumes.
        framework: What holds ``framework_epoch``, e.g. ``"BackupAndRestore"``.
        recovery: How to recover, appended to the message.

    Raises:
        ResumeMismatchError: The two differ.
    """
    if saved_epoch != framework_epoch:
        raise ResumeMismatchError(
            f"dynft's saved state is at epoch {saved_epoch} but {framework} resumes after epoch "
            f"{framework_epoch}; they were not saved together, so continuing would take "
            f"decisions for the wrong epoch. {recovery}"
        )

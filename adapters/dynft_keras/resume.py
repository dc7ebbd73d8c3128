"""Resuming next to ``BackupAndRestore``: which dynft backup belongs to its checkpoint, and proof.

At every epoch end dynft writes its backup first, then ``BackupAndRestore`` writes the model's
weights and then its metadata (the epoch). A kill can fall between any two of these writes, and
``BackupAndRestore(double_checkpoint=True)`` may fall back to its previous checkpoint, so on
resume dynft picks its backup of the epoch that ``BackupAndRestore``'s metadata names (the two
newest are kept), and once ``BackupAndRestore`` has loaded, at the start of the first epoch,
checks both the epoch and the optimizer's step count (saved inside ``BackupAndRestore``'s
checkpoint, it tells which epoch end the restored weights come from). Any disagreement is a
[`ResumeMismatchError`][dynft_core.ResumeMismatchError] naming both sides and the way out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dynft_core import ResumeMismatchError, check_resume_point

from . import backup

METADATA_FILE = "training_metadata.json"  # BackupAndRestore's name for its epoch record
FRAMEWORK = "BackupAndRestore"


def backup_and_restore_epoch(folder: str | os.PathLike[str]) -> int | None:
    """The epoch ``BackupAndRestore``'s metadata in ``folder`` resumes from (``None``: none)."""
    path = Path(folder) / METADATA_FILE
    try:
        epoch = json.loads(path.read_text())["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


@dataclass(frozen=True)
class Expected:
    """Where the framework must resume for the loaded dynft state to be right.

    Attributes:
        epoch: Epochs the loaded state has stepped.
        steps: Optimizer steps at that point, when ``BackupAndRestore`` restores the
            optimizer (``None``: not checked, e.g. after ``set_state``).
        framework: What sets the starting epoch, for messages.
        recovery: How to get out of a mismatch.
        points: Every dynft backup found (to name the epoch a step count belongs to).
    """

    epoch: int
    steps: int | None
    framework: str
    recovery: str
    points: tuple[backup.SavedPoint, ...] = ()


def choose(folder: str | os.PathLike[str]) -> tuple[backup.SavedPoint | None, Expected | None]:
    """The dynft backup to resume from, and what to check once ``BackupAndRestore`` loaded.

    Raises:
        backup.BackupError: Backup files exist but none can be read.
        ResumeMismatchError: ``BackupAndRestore``'s metadata names an epoch dynft has no
            backup of.
    """
    points, problems = backup.scan(folder)
    if not points:
        if problems:
            raise backup.BackupError(
                f"no readable dynft backup in {folder}: {'; '.join(map(str, problems))}. "
                f"Delete {folder} to start over"
            )
        return None, None
    framework_epoch = backup_and_restore_epoch(folder)
    epochs = [point.epoch for point in points]
    recovery = (
        f"dynft holds backups of epochs {epochs} in {folder}; both files must come from the same "
        f"run and folder. Delete {folder} to start over"
    )
    if framework_epoch is None:
        # No BackupAndRestore checkpoint in the folder: a kill before its first write (only
        # the epoch-0 backup fits a fresh start), or its files are elsewhere or gone, which the
        # check at the first epoch tells apart.
        chosen = points[0] if epochs[0] == 0 else points[-1]
    else:
        matching = [point for point in points if point.epoch == framework_epoch]
        if not matching:
            check_resume_point(points[-1].epoch, framework_epoch, FRAMEWORK, recovery)
        chosen = matching[0]
    return chosen, Expected(chosen.epoch, chosen.steps, FRAMEWORK, recovery, tuple(points))


def verify(expected: Expected, epoch: int, steps: int) -> None:
    """Check, before the first epoch trains, that the framework resumed where dynft did.

    Args:
        expected: From [`choose`][dynft_keras.resume.choose] or a ``set_state``.
        epoch: The index of the first epoch this ``fit`` runs (epochs already done).
        steps: ``model.optimizer``'s step count now.

    Raises:
        ResumeMismatchError: The epoch differs, or the restored optimizer state is not the
            one saved with the dynft state (the message names the epochs and the way out).
    """
    check_resume_point(expected.epoch, epoch, expected.framework, expected.recovery)
    if expected.steps is None or steps == expected.steps:
        return
    owner = next((point for point in expected.points if point.steps == steps), None)
    if owner is not None:
        folder = owner.path.parent
        check_resume_point(
            owner.epoch,
            epoch,
            f"{FRAMEWORK}'s {METADATA_FILE}",
            f"{FRAMEWORK} was interrupted between writing its weights (those of epoch "
            f'{owner.epoch}) and its metadata; set "epoch": {owner.epoch} in '
            f"{folder / METADATA_FILE} to resume from there, or delete {folder} to start over",
        )
    raise ResumeMismatchError(
        f"the optimizer state {FRAMEWORK} restored is at step {steps}, but dynft's backup of "
        f"epoch {expected.epoch} was saved at step {expected.steps}: the restored weights are "
        "not from the end of an epoch dynft saved (BackupAndRestore needs save_freq='epoch' "
        f"and the same folder). {expected.recovery}"
    )

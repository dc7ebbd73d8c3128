"""dynft's resume files, written next to ``keras.callbacks.BackupAndRestore``'s checkpoint.

``BackupAndRestore`` saves the model and optimizer variables and the epoch; the callback's own
state (the scheduler, the learning rate, pending work) and the best snapshot's arrays go into
one file per epoch end, ``dynft_backup_<epoch>.npz``, with a SHA-256 of all of it inside:

* the file is written to a temporary name, flushed to disk and renamed over its final name
  (``os.replace``), so a kill at any moment leaves only complete files, never half a state;
* the two newest files are kept: a kill after dynft's write and before ``BackupAndRestore``'s
  (or a ``double_checkpoint`` fallback to its previous checkpoint) still finds the dynft state
  that belongs to the checkpoint ``BackupAndRestore`` resumes from.

Which file belongs to which checkpoint is decided on resume (see
[`resume`][dynft_keras.resume]).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "dynft_backup_"
SUFFIX = ".npz"
KEEP = 2
_STATE_KEY = "__state__"
_DIGEST_KEY = "__sha256__"
_NAME = re.compile(rf"^{PREFIX}(\d+){re.escape(SUFFIX)}$")


class BackupError(ValueError):
    """A dynft backup file is unreadable, fails its checksum or holds an invalid state."""


@dataclass(frozen=True)
class SavedPoint:
    """One backup file: the callback state and snapshot arrays after ``epoch`` epochs.

    Attributes:
        path: The file.
        epoch: Epochs stepped when it was written.
        steps: Training steps of ``model.optimizer`` then (what ``BackupAndRestore`` restores
            alongside, which identifies its checkpoint).
        state: The callback's ``get_state()``.
        arrays: The best snapshot's values keyed by position in ``model.weights``.
    """

    path: Path
    epoch: int
    steps: int
    state: dict[str, Any]
    arrays: dict[str, np.ndarray]


def path_for(folder: str | os.PathLike[str], epoch: int) -> Path:
    """The backup file of ``epoch`` in ``folder``."""
    return Path(folder) / f"{PREFIX}{epoch:06d}{SUFFIX}"


def _digest(state_bytes: bytes, arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(state_bytes)
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _write_atomically(path: Path, payload: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # Make the rename itself durable (a power loss could otherwise undo it).
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save(
    folder: str | os.PathLike[str], state: dict[str, Any], arrays: dict[str, np.ndarray], epoch: int
) -> Path:
    """Write the backup of ``epoch`` (replacing one of that epoch) and drop older ones.

    Returns:
        The file written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{PREFIX}*.tmp"):  # left by a kill during an earlier write
        stale.unlink(missing_ok=True)
    state_bytes = json.dumps(state, allow_nan=False).encode()
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **arrays,
        **{
            _STATE_KEY: np.frombuffer(state_bytes, dtype=np.uint8),
            _DIGEST_KEY: np.frombuffer(_digest(state_bytes, arrays).encode(), dtype=np.uint8),
        },
    )
    path = path_for(folder, epoch)
    _write_atomically(path, buffer.getvalue())
    older = sorted(e for e, p in _listed(folder) if e < epoch)
    for old in older[: max(0, len(older) - (KEEP - 1))]:
        path_for(folder, old).unlink(missing_ok=True)
    return path


def _listed(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load(path: Path) -> SavedPoint:
    """Read and check one backup file.

    Raises:
        BackupError: The file cannot be read as an archive, lacks the state or the checksum,
            fails the checksum, or its state does not name the epoch its file name does.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            entries = {key: data[key] for key in data.files}
    except Exception as err:  # zipfile, OSError and ValueError all mean "not a backup"
        raise BackupError(f"{path} is not a readable dynft backup: {err}") from None
    if _STATE_KEY not in entries or _DIGEST_KEY not in entries:
        raise BackupError(f"{path} lacks the {_STATE_KEY} or {_DIGEST_KEY} entry")
    state_bytes = entries.pop(_STATE_KEY).tobytes()
    expected = entries.pop(_DIGEST_KEY).tobytes().decode("ascii", errors="replace")
    if _digest(state_bytes, entries) != expected:
        raise BackupError(f"{path} fails its SHA-256 check; it was altered or damaged")
    try:
        state = json.loads(state_bytes)
        epoch = state["scheduler"]["epoch"]
        steps = state["train_steps"]
    except (ValueError, KeyError, TypeError) as err:
        raise BackupError(f"{path} holds no valid dynft state ({err!r})") from None
    match = _NAME.match(path.name)
    if match is None or int(match.group(1)) != epoch or not isinstance(steps, int):
        raise BackupError(f"{path} holds the state of epoch {epoch!r} (steps {steps!r})")
    return SavedPoint(path, epoch, steps, state, entries)


def scan(folder: str | os.PathLike[str]) -> tuple[list[SavedPoint], list[BackupError]]:
    """Every backup in ``folder``, oldest first, and the problems of files that failed."""
    points, problems = [], []
    for _, path in _listed(Path(folder)):
        try:
            points.append(load(path))
        except BackupError as err:
            problems.append(err)
    return points, problems


def remove_all(folder: str | os.PathLike[str]) -> None:
    """Delete dynft's files from ``folder`` (other files are left alone)."""
    folder = Path(folder)
    for _, path in _listed(folder):
        path.unlink(missing_ok=True)
    if folder.is_dir():
        for stale in folder.glob(f".{PREFIX}*.tmp"):
            stale.unlink(missing_ok=True)

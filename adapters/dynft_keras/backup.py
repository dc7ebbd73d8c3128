"""Files that let an interrupted run resume next to ``keras.callbacks.BackupAndRestore``.

``BackupAndRestore`` saves the model and optimizer weights and the epoch; the
callback's own state (the scheduler, the learning rate) and the best
snapshot live in two more files in the same folder:

* ``dynft_state.json``: :meth:`DynamicFineTuning.get_state`, JSON;
* ``dynft_best.npz``: the best snapshot's arrays, keyed by position in
  ``model.weights``, plus the epoch they were taken at.

Both are replaced atomically so an interruption never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

STATE_FILE = "dynft_state.json"
SNAPSHOT_FILE = "dynft_best.npz"
_EPOCH_KEY = "snapshot_epoch"


def _replace_atomically(path: Path, write: Any, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, mode) as handle:
        write(handle)
    os.replace(temporary, path)


def save_state(folder: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write the callback state as JSON into ``folder`` (created if missing)."""
    _replace_atomically(
        Path(folder) / STATE_FILE, lambda handle: json.dump(state, handle, allow_nan=True), "w"
    )


def save_snapshot(
    folder: str | os.PathLike[str], arrays: dict[str, np.ndarray], epoch: int
) -> None:
    """Write the best snapshot's arrays into ``folder`` (created if missing)."""
    payload = {**arrays, _EPOCH_KEY: np.asarray(epoch)}
    _replace_atomically(
        Path(folder) / SNAPSHOT_FILE, lambda handle: np.savez(handle, **payload), "wb"
    )


def load_state(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved callback state, or ``None`` when ``folder`` holds none."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    with open(path) as handle:
        state: dict[str, Any] = json.load(handle)
    return state


def load_snapshot(folder: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], int] | None:
    """The saved snapshot arrays and their epoch, or ``None`` when ``folder`` holds none."""
    path = Path(folder) / SNAPSHOT_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files if key != _EPOCH_KEY}
        epoch = int(data[_EPOCH_KEY])
    return arrays, epoch


def remove_backup(folder: str | os.PathLike[str]) -> None:
    """Delete the callback's files from ``folder`` (other files are left alone)."""
    for name in (STATE_FILE, SNAPSHOT_FILE):
        path = Path(folder) / name
        if path.is_file():
            path.unlink()

"""Lightning checkpoints written atomically.

Lightning (2.6, ``lightning.fabric.utilities.cloud_io._atomic_save``) writes a local checkpoint
inside an fsspec transaction: the bytes go to a temporary file in the *system temp folder*
(``tempfile.mkstemp()``), which is moved onto the checkpoint path at commit with
``shutil.move``. On one filesystem that move is a rename, which a kill cannot tear. When the
temp folder is on another filesystem (``/tmp`` on tmpfs, a mounted checkpoint volume), the move
is a copy that first truncates the checkpoint file (``last.ckpt`` included) and then fills it:
a kill during the copy leaves a truncated file, possibly the only checkpoint. Neither path
syncs the data to disk.

``AtomicCheckpointIO`` writes the temporary file next to the checkpoint, syncs it, renames it
over the old one and syncs the folder (``dynft_torch.checkpoint.atomic_torch_save``), whatever
the temp folder. ``DynamicFineTuning`` warns at fit start when Lightning's own writer would
copy across filesystems.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpoint import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable on any filesystem.

    ``Trainer(plugins=[AtomicCheckpointIO()])``. Remote paths (``s3://`` ...) are written by
    Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_torch_save(checkpoint, path)


def _device(path: str) -> int | None:
    """The filesystem of ``path``, or of its nearest existing parent (a folder not made yet)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def warn_if_checkpoints_can_tear(trainer: pl.Trainer) -> None:
    """Warn when Lightning's default writer would copy checkpoints across filesystems."""
    if type(trainer.strategy.checkpoint_io) is not TorchCheckpointIO:
        return
    temp = _device(tempfile.gettempdir())
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if not folder or not _is_local_file_protocol(folder):
            continue
        if temp is not None and _device(folder) not in (None, temp):
            warnings.warn(
                f"dynft: Lightning writes each checkpoint to a temporary file in "
                f"{tempfile.gettempdir()} and moves it to {folder}, another filesystem: the "
                "move is a copy that truncates the old checkpoint first, so a kill during it "
                "leaves a broken checkpoint. Pass Trainer(plugins=[dynft_torch.lightning."
                "AtomicCheckpointIO()]) or set TMPDIR to a folder on the checkpoints' "
                "filesystem",
                UserWarning,
                stacklevel=2,
            )
            return

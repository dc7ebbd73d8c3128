"""A scripted fit with dynft's backup and BackupAndRestore, and a process that dies inside it.

``fit_scripted`` is the run both sides share: the test runs it uninterrupted (the reference)
and to resume. Run as a script, it installs one kill point and runs the same fit until the
process ends with ``os._exit(KILLED)``, as a preempted job would:

``python kill_run.py BACKUP_DIR POINT N``, POINT one of

* ``epoch``: at the beginning of epoch N (0-based), between two epochs;
* ``dynft-torn``: inside dynft's N-th backup write, its temporary file half written;
* ``dynft-unrenamed``: after dynft's N-th backup is written, before it is renamed into place;
* ``after-dynft``: right after dynft's N-th backup, before BackupAndRestore's save;
* ``bar-weights``: after BackupAndRestore's N-th weights file, before its metadata;
* ``bar-torn``: inside BackupAndRestore's N-th weights file (garbage left in it).

dynft's first backup (N=1) is the one written at train begin; the one of epoch e is N=e+1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import keras
from dynft_keras import DynamicFineTuning
from keras_helpers import ScriptedMonitor, tiny_data, tiny_model

KILLED = 86
# 3 groups, patience 1, step 1: unfreezes after epochs 3, 5 and 7, stop after 8.
SCRIPT = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75, 0.76]


def deterministic_kernels():
    """TensorFlow's deterministic kernels, on both sides of a comparison.

    The test process may have them on already (the study's ``configure`` turns them on, and
    TensorFlow cannot turn them off again); a killed process without them trained conv1 2.4e-6
    away from the reference on an AMD EPYC.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fit_scripted(backup_dir, seed=0, extra=()):
    """The shared run; returns ``(model, callback, history)``."""
    deterministic_kernels()
    model, backbone = tiny_model(seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    x, y = tiny_data(count=16)
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=0.5, verbose=0,
                           backup_dir=backup_dir)  # fmt: skip
    restore = keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True)
    history = model.fit(
        x, y, batch_size=8, epochs=20, shuffle=False, verbose=0,
        callbacks=[ScriptedMonitor(SCRIPT), cb, restore, *extra],
    )  # fmt: skip
    return model, cb, history


class _DieAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            os._exit(KILLED)


def _is_dynft_temporary(fd: int) -> bool:
    name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
    return name.startswith(".dynft_backup_") and name.endswith(".tmp")


def _install(point: str, n: int) -> list[keras.callbacks.Callback]:
    calls = {"count": 0}

    def nth() -> bool:
        calls["count"] += 1
        return calls["count"] == n

    if point == "epoch":
        return [_DieAtEpoch(n)]
    if point == "dynft-torn":
        fsync = os.fsync

        def torn(fd: int) -> None:
            if _is_dynft_temporary(fd) and nth():
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os._exit(KILLED)
            fsync(fd)

        os.fsync = torn
    elif point in ("dynft-unrenamed", "after-dynft"):
        replace = os.replace

        def renamed(src, dst) -> None:
            ours = Path(dst).name.startswith("dynft_backup_")
            if ours and nth() and point == "dynft-unrenamed":
                os._exit(KILLED)
            replace(src, dst)
            if ours and calls["count"] == n:
                os._exit(KILLED)

        os.replace = renamed
    elif point in ("bar-weights", "bar-torn"):
        save_weights = keras.Model.save_weights

        def saved(self, filepath, *args, **kwargs):
            if not nth():
                return save_weights(self, filepath, *args, **kwargs)
            if point == "bar-torn":
                Path(filepath).write_bytes(b"\x89HDF\r\n torn by a kill")
            else:
                save_weights(self, filepath, *args, **kwargs)
            os._exit(KILLED)

        keras.Model.save_weights = saved
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    return []


if __name__ == "__main__":
    folder, point, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fit_scripted(folder, extra=_install(point, count))
    sys.exit(0)  # the kill point was never reached

"""A plain dynft training loop that checkpoints every epoch and dies at a chosen point.

Run as ``python kill_worker.py CHECKPOINT POINT EPOCH [PAD_MB]``: it trains from scratch, saves with
``save_checkpoint`` after every ``tuner.step``, and at epoch ``EPOCH`` (0-based) is killed with
SIGKILL at ``POINT``:

* ``between-epochs``: after that epoch's checkpoint was written;
* ``mid-write``: halfway through writing that epoch's checkpoint bytes;
* ``before-replace``: the new file is complete and synced, the rename not done;
* ``after-replace``: renamed, the folder not synced yet;
* ``never``: not killed here (the test kills it at a random moment; ``PAD_MB`` of padding in
  every checkpoint makes the writes long enough to be hit).

The loop is ``resume_loop.train``; the tests run it in process too.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import torch
from dynft_torch import checkpoint
from resume_loop import VALUES, build, train


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str, kill_epoch: int, tuner) -> None:
    """Replace the functions save_checkpoint calls so that the kill happens inside it."""

    def at_kill_epoch() -> bool:
        return tuner.scheduler.epoch == kill_epoch + 1

    real_save, real_replace, real_sync = torch.save, os.replace, checkpoint._sync_folder

    def half_save(obj, stream):
        if not at_kill_epoch():
            return real_save(obj, stream)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        stream.write(data[: len(data) // 2])
        stream.flush()
        os.fsync(stream.fileno())
        _die()

    def replace_then(source, target):
        if at_kill_epoch() and point == "before-replace":
            _die()
        real_replace(source, target)

    def sync_then(folder):
        if at_kill_epoch():
            _die()
        real_sync(folder)

    if point == "mid-write":
        checkpoint.torch.save = half_save
    elif point == "before-replace":
        checkpoint.os.replace = replace_then
    elif point == "after-replace":
        checkpoint._sync_folder = sync_then


def main(path: str, point: str, kill_epoch: int, pad_mb: float = 0.0) -> None:
    torch.set_num_threads(1)  # as the test process (conftest.py): bit-identical results
    objects = build()
    _arm(point, kill_epoch, objects[3])

    def between_epochs(epoch: int) -> None:
        if point == "between-epochs" and epoch == kill_epoch:
            _die()

    padding = {"padding": torch.zeros(int(pad_mb * 2**18))} if pad_mb else None
    train(objects, 0, len(VALUES), Path(path), between_epochs, padding)
    if point == "never":
        print("finished without a kill", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *map(float, sys.argv[4:]))

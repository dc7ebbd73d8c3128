"""Kill a Lightning fit between epochs, between two checkpoint writers and during a write;
resuming from what is on disk ends with the weights and decisions of the uninterrupted run, or
(Lightning's own writer moving across filesystems) finds the checkpoint torn.

The fit runs in a child forked from this process (no second Lightning import) with three
checkpoint writes per epoch: writer A's epoch file, A's ``last.ckpt``, writer B's epoch file.
The kill lands in epoch 3 (0-based), whose decision unfreezes groups and leaves a rollback
pending, so the checkpoints of that epoch carry a restore that the resumed fit must carry out.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import signal
import tempfile

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")
import fsspec.implementations.local  # noqa: E402
from dynft_torch import checkpoint as dynft_checkpoint  # noqa: E402
from dynft_torch.lightning import AtomicCheckpointIO  # noqa: E402
from lightning.fabric.plugins import TorchCheckpointIO  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning_models import ScriptedModule, fit  # noqa: E402
from tiny_models import assert_states_equal, state_copy  # noqa: E402

KILL_EPOCH = 3
WRITES_PER_EPOCH = 3
A_EPOCH, A_LAST, B_EPOCH = (KILL_EPOCH * WRITES_PER_EPOCH + n for n in (1, 2, 3))


def writers(root):
    return [
        ModelCheckpoint(root / "a", filename="{epoch}", save_top_k=-1, save_last=True),
        ModelCheckpoint(root / "b", filename="{epoch}", save_top_k=-1, monitor="score"),
    ]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtEpochStart(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == KILL_EPOCH + 1:
            die()


def arm(point: str) -> None:
    """Patch, in the child only, the functions a checkpoint write goes through."""
    writes = {"count": 0}

    def counting(save):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            writes["count"] += 1
            if point == "between-writes" and writes["count"] == B_EPOCH:
                die()
            save(self, checkpoint, path, storage_options)

        return save_checkpoint

    def armed() -> bool:
        return writes["count"] == A_LAST

    real_write = fsspec.implementations.local.LocalFileOpener.write
    real_save, real_sendfile = torch.save, shutil._fastcopy_sendfile

    def half_write(self, data):  # Lightning's writer, into its temporary file
        if not armed():
            return real_write(self, data)
        real_write(self, data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        die()

    def half_save(payload, stream):  # AtomicCheckpointIO, into its temporary file
        if not armed():
            return real_save(payload, stream)
        buffer = io.BytesIO()
        real_save(payload, buffer)
        stream.write(buffer.getvalue()[: buffer.tell() // 2])
        stream.flush()
        os.fsync(stream.fileno())
        die()

    def half_copy(source, target):  # shutil.move across filesystems, after opening with "wb"
        if not armed():
            return real_sendfile(source, target)
        target.write(source.read(os.fstat(source.fileno()).st_size // 2))
        target.flush()
        os.fsync(target.fileno())
        die()

    TorchCheckpointIO.save_checkpoint = counting(TorchCheckpointIO.save_checkpoint)
    AtomicCheckpointIO.save_checkpoint = counting(AtomicCheckpointIO.save_checkpoint)
    if point == "mid-write":
        fsspec.implementations.local.LocalFileOpener.write = half_write
    elif point == "atomic mid-write":
        dynft_checkpoint.torch.save = half_save
    elif point == "mid-move":
        shutil._fastcopy_sendfile = half_copy


def killed_fit(root, point: str, temp: str) -> None:
    torch.set_num_threads(1)  # a forked child must not wait on the parent's OpenMP team
    tempfile.tempdir = temp
    arm(point)
    plugins = [AtomicCheckpointIO()] if point.startswith("atomic") else []
    kill = [KillAtEpochStart()] if point == "between-epochs" else []
    fit(ScriptedModule(), root, [*writers(root), *kill], max_epochs=8, plugins=plugins)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    module = ScriptedModule()
    _, callback = fit(module, tmp_path_factory.mktemp("straight"), max_epochs=8)
    return state_copy(module), callback.decisions


def epoch_of(path) -> int:
    return int(torch.load(path, weights_only=True)["epoch"])


def assert_resumes_to_the_straight_run(path, root, straight) -> None:
    module = ScriptedModule(seed=1)
    _, callback = fit(module, root, ckpt_path=path, max_epochs=8)
    assert callback.decisions == straight[1]
    assert_states_equal(state_copy(module), straight[0])


POINTS = {  # on disk after the kill: epoch of A's last.ckpt, epoch of B's last file
    "between-epochs": (KILL_EPOCH, KILL_EPOCH),
    "between-writes": (KILL_EPOCH, KILL_EPOCH - 1),
    "mid-write": (KILL_EPOCH - 1, KILL_EPOCH - 1),
    "atomic mid-write": (KILL_EPOCH - 1, KILL_EPOCH - 1),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_a_killed_fit_resumes_from_any_checkpoint_it_left(tmp_path, straight, point):
    temp = tmp_path / "tmp"
    temp.mkdir()
    child = multiprocessing.get_context("fork").Process(
        target=killed_fit, args=(tmp_path, point, str(temp))
    )
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    last_epoch, b_epoch = POINTS[point]
    b_files = sorted((tmp_path / "b").iterdir(), key=epoch_of)
    assert epoch_of(tmp_path / "a" / "last.ckpt") == last_epoch
    assert epoch_of(b_files[-1]) == b_epoch
    torn = [p.name for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]
    assert bool(torn) == (point == "atomic mid-write")  # its temporary file, beside the old one
    assert bool(os.listdir(temp)) == (point == "mid-write")  # Lightning's, in the temp folder
    for path in {tmp_path / "a" / "last.ckpt", b_files[-1]}:
        assert_resumes_to_the_straight_run(path, tmp_path, straight)


def test_lightnings_writer_tears_last_ckpt_when_the_temp_folder_is_elsewhere(tmp_path):
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    temp = tempfile.mkdtemp(dir="/dev/shm")
    try:
        child = multiprocessing.get_context("fork").Process(
            target=killed_fit, args=(tmp_path, "mid-move", temp)
        )
        child.start()
        child.join(timeout=300)
    finally:
        shutil.rmtree(temp)
    assert child.exitcode == -signal.SIGKILL
    with pytest.raises(Exception):  # noqa: B017  (torch raises one of several kinds)
        torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)

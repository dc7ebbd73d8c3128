"""Interruption-safe checkpoints for a plain PyTorch loop: one file, replaced atomically.

``torch.save(state, "ckpt.pt")`` overwrites the only checkpoint in place; a kill during the
write leaves a truncated file and nothing to resume from. ``save_checkpoint`` writes a
temporary file in the same folder, flushes it to disk and renames it over the old one
(``os.replace`` is atomic on POSIX and Windows): at any moment the path holds either the old
complete checkpoint or the new one. Model, optimizer, tuner and schedulers live in that one file,
so they can never come from different epochs. ``load_checkpoint`` checks everything
(``weights_only=True``, every key, every shape, the optimizer layout the tuner re-creates, the
saved epoch against the tuner's) before it changes anything.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dynft_core import check_resume_point

from .distributed import unwrap_model
from .lr_schedulers import as_scheduler_list

if TYPE_CHECKING:
    from .tuner import DynamicFineTuner

CHECKPOINT_FORMAT = "dynft_torch.checkpoint"
CHECKPOINT_VERSION = 1
_KEYS = ("format", "version", "epoch", "model", "optimizer", "tuner", "lr_schedulers", "extra")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded into the given objects; nothing was changed."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _check_tuner_pairing(
    tuner: DynamicFineTuner | None, model: nn.Module | None, optimizer: object
) -> None:
    if tuner is None:
        return
    if model is None or unwrap_model(model) is not tuner.model:
        raise ValueError("with tuner= pass model= too: the model the tuner was built on")
    if optimizer is None or optimizer is not tuner.optimizer:
        raise ValueError("with tuner= pass optimizer= too: the tuner's optimizer")


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    tuner: DynamicFineTuner | None = None,
    lr_scheduler: object | Sequence[object] | None = None,
    epoch: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: ``path`` holds the old file or the new one, never half.

    Args:
        path: The checkpoint file (its folder must exist).
        model: Its ``state_dict()`` is saved (wrappers unwrapped).
        optimizer: Its ``state_dict()`` is saved.
        tuner: Its ``state_dict()`` is saved; needs ``model`` and ``optimizer`` (the tuner's).
        lr_scheduler: One scheduler or a list; their ``state_dict()`` are saved.
        epoch: Epochs completed. Defaults to the tuner's ``scheduler.epoch`` (call this after
            ``tuner.step``).
        extra: More to save (numbers, strings, lists, dicts, tensors; e.g. RNG states).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``tuner`` without its model/optimizer, or an ``epoch`` other than the
            tuner's (the checkpoint would resume at the wrong point); nothing is written then.
    """
    _check_tuner_pairing(tuner, model, optimizer)
    if tuner is not None:
        stepped = tuner.scheduler.epoch
        if epoch is None:
            epoch = stepped
        elif epoch != stepped:
            raise ValueError(
                f"epoch={epoch} but the tuner has stepped {stepped} epochs: save the checkpoint "
                "right after tuner.step() of that epoch"
            )
    schedulers = as_scheduler_list(lr_scheduler)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "model": None if model is None else unwrap_model(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "tuner": None if tuner is None else tuner.state_dict(),
        "lr_schedulers": [{"class": type(s).__name__, "state": s.state_dict()} for s in schedulers],
        "extra": dict(extra or {}),
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save(payload, path)`` atomically: a synced temporary file in the same folder,
    renamed over ``path``, then the folder synced. A kill at any moment leaves the old file or
    the new one (and perhaps a ``.NAME.*.tmp`` file beside it).

    Returns:
        ``path`` as a ``Path``.
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_folder(target.parent)
    return target


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX: the directory entry is flushed with the folder)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: is not a {CHECKPOINT_FORMAT} file (write it with save_checkpoint)"
        )
    if payload.get("version") != CHECKPOINT_VERSION or set(payload) != set(_KEYS):
        raise CheckpointError(
            f"{path}: has version {payload.get('version')!r} and keys {sorted(payload)}; "
            f"expected version {CHECKPOINT_VERSION} with {list(_KEYS)}"
        )
    return payload


def _entry(path: Path, payload: Mapping[str, Any], key: str) -> Any:
    value = payload[key]
    if value is None:
        raise CheckpointError(f"{path}: has no {key!r} entry (it was saved without {key}=)")
    return value


def _check_model(path: Path, model: nn.Module, saved: object) -> None:
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{path}: key 'model' must be a state dict")
    mine = model.state_dict()
    missing = [k for k in mine if k not in saved]
    unexpected = [k for k in saved if k not in mine]
    if missing or unexpected:
        key = missing[0] if missing else unexpected[0]
        problem = "is missing" if missing else "is not in the model"
        raise CheckpointError(
            f"{path}: key 'model.{key}' {problem} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected)"
        )
    for key, tensor in saved.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != mine[key].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise CheckpointError(
                f"{path}: key 'model.{key}' has shape {shape}, the model's {tuple(mine[key].shape)}"
            )


def _check_optimizer(path: Path, saved: object, group_sizes: list[int]) -> None:
    if not isinstance(saved, Mapping) or not isinstance(saved.get("param_groups"), list):
        raise CheckpointError(f"{path}: key 'optimizer' must be an optimizer state dict")
    groups = saved["param_groups"]
    if len(groups) != len(group_sizes):
        raise CheckpointError(
            f"{path}: key 'optimizer.param_groups' has {len(groups)} groups, the optimizer "
            f"{len(group_sizes)} (after the tuner re-creates its groups); build the optimizer "
            "like the saved run's"
        )
    for index, (group, size) in enumerate(zip(groups, group_sizes, strict=True)):
        count = len(group.get("params", [])) if isinstance(group, Mapping) else -1
        if count != size:
            raise CheckpointError(
                f"{path}: key 'optimizer.param_groups[{index}]' holds {count} parameters, the "
                f"optimizer's group {size}"
            )


def _check_schedulers(path: Path, schedulers: Sequence[object], saved: object) -> None:
    classes = [type(s).__name__ for s in schedulers]
    stored = [e.get("class") for e in saved] if isinstance(saved, list) else saved
    if stored != classes:
        raise CheckpointError(f"{path}: key 'lr_schedulers' holds {stored}, expected {classes}")


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    tuner: DynamicFineTuner | None = None,
    lr_scheduler: object | Sequence[object] | None = None,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Load a [`save_checkpoint`][dynft_torch.save_checkpoint] file into the given objects.

    Everything is checked first: the file reads with ``weights_only=True``; it holds an entry
    for every object given; the model's keys and shapes match; the optimizer state matches the
    param groups the tuner re-creates; the schedulers are of the saved classes; the saved epoch
    equals the tuner's ([`check_resume_point`][dynft_core.check_resume_point]). Then the model,
    the tuner, the optimizer and the schedulers are loaded, in that order.

    Args:
        path: The checkpoint file.
        model: The model to restore (wrappers unwrapped).
        optimizer: The optimizer to restore, built as in the saved run.
        tuner: The tuner to restore, freshly built as in the saved run; needs ``model`` and
            ``optimizer`` (its own).
        lr_scheduler: One scheduler or a list, of the saved classes.
        map_location: Where tensors are loaded first (``"cpu"`` by default; the model and
            optimizer then copy them to their own devices).

    Returns:
        ``{"epoch": epochs completed, "extra": the saved extra dict}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: The file is unreadable, or an entry is missing or does not fit (the
            message names the file and the key); nothing was changed.
        dynft_core.ResumeMismatchError: The saved epoch and the tuner's state disagree.
    """
    _check_tuner_pairing(tuner, model, optimizer)
    target = Path(path)
    payload = _read(target, map_location)
    schedulers = as_scheduler_list(lr_scheduler)
    if model is not None:
        _check_model(target, unwrap_model(model), _entry(target, payload, "model"))
    plan = None
    if tuner is not None:
        try:
            plan = tuner._plan_load(_entry(target, payload, "tuner"))
        except ValueError as err:
            raise CheckpointError(f"{target}: key 'tuner': {err}") from None
        epoch = payload["epoch"]
        check_resume_point(
            plan.epoch,
            epoch if isinstance(epoch, int) else -1,
            f"the checkpoint {target}",
            "The file was not written by save_checkpoint after tuner.step(); resume from "
            "another checkpoint.",
        )
    if optimizer is not None:
        sizes = (
            plan.param_group_sizes
            if plan is not None
            else [len(g["params"]) for g in optimizer.param_groups]
        )
        _check_optimizer(target, _entry(target, payload, "optimizer"), sizes)
    if schedulers:
        _check_schedulers(target, schedulers, payload["lr_schedulers"])

    if model is not None:
        unwrap_model(model).load_state_dict(payload["model"])
    if tuner is not None and plan is not None:
        tuner._apply_load(plan)
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if schedulers:  # checked above to match the saved ones one for one
        for scheduler, saved in zip(schedulers, payload["lr_schedulers"], strict=True):
            scheduler.load_state_dict(saved["state"])
    return {"epoch": payload["epoch"], "extra": payload["extra"]}

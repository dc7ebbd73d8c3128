"""save_checkpoint / load_checkpoint: resume gives the straight run's weights; every failed
load names the file and the key and changes nothing."""

from __future__ import annotations

import os
import stat
from fractions import Fraction

import pytest
import torch
from dynft_torch import CheckpointError, load_checkpoint, save_checkpoint
from resume_loop import VALUES, build, resume, train
from tiny_models import state_copy
from torch.optim import lr_scheduler as sched

from dynft_core import ResumeMismatchError


def test_resume_from_a_checkpoint_equals_the_straight_run(tmp_path):
    straight = build()
    train(straight, 0, len(VALUES))
    path = tmp_path / "ckpt.pt"
    first = build()
    train(first, 0, 4, path, extra={"rng": torch.get_rng_state()})
    objects, info = resume(path)
    assert info["epoch"] == 4 and info["extra"]["rng"].dtype == torch.uint8
    train(objects, 4, len(VALUES))
    assert objects[3].scheduler.history == straight[3].scheduler.history
    for name, tensor in state_copy(straight[0]).items():
        assert torch.equal(state_copy(objects[0])[name], tensor), name
    assert [g["lr"] for g in objects[1].param_groups] == [g["lr"] for g in straight[1].param_groups]
    assert len(objects[2].lr_lambdas) == len(objects[1].param_groups) == 3  # two unfreezes
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~current_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_refuses_an_epoch_other_than_the_tuner_and_writes_nothing(tmp_path):
    model, optimizer, scheduler, tuner = build()
    train((model, optimizer, scheduler, tuner), 0, 2)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(ValueError, match="epoch=3 but the tuner has stepped 2 epochs"):
        save_checkpoint(path, model=model, optimizer=optimizer, tuner=tuner, epoch=3)
    with pytest.raises(ValueError, match="with tuner= pass optimizer= too"):
        save_checkpoint(path, model=model, tuner=tuner)
    assert list(tmp_path.iterdir()) == []


def fresh_signature(objects):
    model, optimizer, _, tuner = objects
    return (
        state_copy(model),
        len(optimizer.param_groups),
        tuner.scheduler.epoch,
        [n for n, p in model.named_parameters() if p.requires_grad],
    )


def assert_unchanged(objects, signature):
    now = fresh_signature(objects)
    for name, tensor in signature[0].items():
        assert torch.equal(now[0][name], tensor), name
    assert now[1:] == signature[1:]


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ckpt.pt"
    train(build(), 0, 4, path)
    return path


def load_into(objects, path):
    model, optimizer, scheduler, tuner = objects
    load_checkpoint(path, model=model, optimizer=optimizer, tuner=tuner, lr_scheduler=scheduler)


def test_a_truncated_or_foreign_file_is_refused_naming_it(saved, tmp_path):
    objects = build(seed=1)
    signature = fresh_signature(objects)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated.pt: cannot be read as a checkpoint"):
        load_into(objects, truncated)
    foreign = tmp_path / "plain.pt"
    torch.save({"model": objects[0].state_dict()}, foreign)
    with pytest.raises(CheckpointError, match=r"plain.pt: is not a dynft_torch.checkpoint file"):
        load_into(objects, foreign)
    unsafe = tmp_path / "unsafe.pt"
    model, optimizer, scheduler, tuner = build()
    save_checkpoint(unsafe, model=model, extra={"ratio": Fraction(1, 3)})
    with pytest.raises(CheckpointError, match=r"unsafe.pt: cannot be read .*Unpickl"):
        load_checkpoint(unsafe, model=objects[0])
    assert_unchanged(objects, signature)


def test_a_missing_entry_is_named(tmp_path):
    model, optimizer, scheduler, tuner = build()
    path = tmp_path / "model-only.pt"
    save_checkpoint(path, model=model)
    objects = build(seed=1)
    signature = fresh_signature(objects)
    with pytest.raises(CheckpointError, match=r"model-only.pt: has no 'tuner' entry"):
        load_into(objects, path)
    assert_unchanged(objects, signature)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"width": 4}, r"key 'model.backbone.0.0.weight' has shape \(8, 3, 3, 3\)"),
        ({"head_only": False}, r"key 'optimizer.param_groups\[0\]' holds 2 parameters, the "),
    ],
    ids=["model-shape", "optimizer-built-otherwise"],
)
def test_objects_built_differently_are_refused_naming_the_key(saved, options, match):
    objects = build(seed=1, **options)
    signature = fresh_signature(objects)
    with pytest.raises(CheckpointError, match=match):
        load_into(objects, saved)
    assert_unchanged(objects, signature)


def test_the_model_alone_loads_from_a_checkpoint_holding_schedulers(saved):
    model = build(seed=1)[0]
    info = load_checkpoint(saved, model=model)
    stored = torch.load(saved, weights_only=True)["model"]
    assert info["epoch"] == 4
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stored[name]), name


def test_optimizer_layout_and_scheduler_classes_are_checked(saved, tmp_path):
    model, optimizer, scheduler, tuner = build(seed=1)
    signature = fresh_signature((model, optimizer, scheduler, tuner))
    with pytest.raises(
        CheckpointError, match=r"'optimizer.param_groups' has 2 groups, the optimizer 1 \(after"
    ):
        load_checkpoint(saved, model=model, optimizer=optimizer)
    step = sched.StepLR(optimizer, 2)
    with pytest.raises(CheckpointError, match=r"'lr_schedulers' holds \['LambdaLR'\], expected"):
        load_checkpoint(saved, model=model, lr_scheduler=step)
    assert_unchanged((model, optimizer, scheduler, tuner), signature)


def test_an_epoch_that_disagrees_with_the_tuner_is_a_resume_mismatch(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    payload["epoch"] = 5
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    objects = build(seed=1)
    signature = fresh_signature(objects)
    with pytest.raises(
        ResumeMismatchError, match=r"at epoch 4 but the checkpoint .* after epoch 5"
    ):
        load_into(objects, edited)
    assert_unchanged(objects, signature)

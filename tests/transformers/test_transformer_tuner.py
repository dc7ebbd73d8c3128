"""DynamicFineTuner with groups='auto' on tiny Hugging Face and timm models, trained for real:
the deepest block is unfrozen first, frozen blocks and BatchNorm statistics never change."""

from __future__ import annotations

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_transformers import BUILDERS, build, logits, make_batch
from torch import nn


def train_epoch(model, optimizer, batch, steps=3):
    inputs, labels = batch
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(logits(model, inputs), labels).backward()
        optimizer.step()


def validation_loss(model, batch):
    inputs, labels = batch
    model.eval()
    with torch.no_grad():
        return nn.functional.cross_entropy(logits(model, inputs), labels).item()


def changed_groups(tuner, before):
    """Indices of the groups with a parameter that differs from ``before``."""
    parameters = dict(tuner.model.named_parameters())
    return [
        group.index
        for group in tuner.groups
        if any(not torch.equal(parameters[n], before[n]) for n in group.parameter_names)
    ]


@pytest.mark.parametrize("family", list(BUILDERS))
def test_deepest_blocks_train_first_and_roll_back(family):
    model = build(family)
    train, val = make_batch(family, seed=1), make_batch(family, n=8, seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # min_delta so large that only the first epoch improves: with patience 1 every later
    # epoch unfreezes the next group and rolls back to the first epoch's weights.
    tuner = DynamicFineTuner(model, optimizer, groups="auto", patience=1, step=1, min_delta=1e9)
    deepest = len(tuner.groups) - 1
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    for _ in range(2):  # head only
        train_epoch(model, optimizer, train)
        assert changed_groups(tuner, initial) == []
        decision = tuner.step(validation_loss(model, val))
    assert decision.newly_unfrozen == (deepest,)

    train_epoch(model, optimizer, train)
    assert changed_groups(tuner, initial) == [deepest]
    for name in tuner.trainable_parameter_names(tuner.groups[deepest]):
        assert not torch.equal(dict(model.named_parameters())[name], initial[name]), name
    decision = tuner.step(validation_loss(model, val))
    assert decision.newly_unfrozen == (deepest - 1,) and decision.restore_best
    assert changed_groups(tuner, initial) == []  # rolled back to the first epoch

    train_epoch(model, optimizer, train)
    assert changed_groups(tuner, initial) == [deepest - 1, deepest]
    frozen_buffers = tuner.batchnorm.buffer_names()
    assert bool(frozen_buffers) == (family == "resnet")
    for name in frozen_buffers:
        assert torch.equal(dict(model.named_buffers())[name], buffers[name]), name

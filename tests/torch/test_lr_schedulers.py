"""How the unfreeze decay combines with the user's learning-rate scheduler."""

from __future__ import annotations

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import TinyNet

# patience 1: epochs 2 and 3 do not improve, so groups unfreeze there (lr x0.9 each time)
VALUES = (1.0, 1.1, 1.2, 0.5)
LR0 = 0.1


def drive(make_scheduler, pass_scheduler: bool, step_scheduler):
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR0)
    scheduler = make_scheduler(optimizer)
    tuner = DynamicFineTuner(
        model,
        optimizer,
        model.backbone,
        patience=1,
        step=1,
        lr_scheduler=scheduler if pass_scheduler else None,
    )
    lrs = []
    for value in VALUES:
        optimizer.step()
        step_scheduler(scheduler, value)
        tuner.step(value)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def lambda_schedule(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1 / (1 + epoch))


def test_lambda_lr_follows_the_decay_when_passed():
    lrs = drive(lambda_schedule, True, lambda s, v: s.step())
    unfreezes = [0, 1, 2, 2]
    expected = [LR0 / (2 + e) * 0.9**r for e, r in enumerate(unfreezes)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_lambda_lr_loses_the_decay_when_not_passed():
    lrs = drive(lambda_schedule, False, lambda s, v: s.step())
    # the closed-form schedule recomputes lr from its base rates at every step: only the
    # decay of the epoch just finished is visible
    assert lrs == pytest.approx([LR0 / 2, LR0 / 3 * 0.9, LR0 / 4 * 0.9, LR0 / 5], rel=1e-12)


def test_reduce_lr_on_plateau_composes_multiplicatively():
    def plateau(optimizer):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)

    lrs = drive(plateau, False, lambda s, v: s.step(v))
    # plateau halves at epochs 2 and 3, the tuner decays by 0.9 at the same epochs
    assert lrs == pytest.approx([LR0, LR0 * 0.45, LR0 * 0.45**2, LR0 * 0.45**2], rel=1e-12)


def test_one_cycle_curve_is_scaled_when_passed():
    def one_cycle(optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10)

    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR0)
    plain = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10)
    scaled_lrs = drive(one_cycle, True, lambda s, v: s.step())
    plain_lrs = []
    for _ in VALUES:
        optimizer.step()
        plain.step()
        plain_lrs.append(optimizer.param_groups[0]["lr"])
    factors = [1.0, 0.9, 0.81, 0.81]
    assert scaled_lrs == pytest.approx([p * f for p, f in zip(plain_lrs, factors, strict=True)])

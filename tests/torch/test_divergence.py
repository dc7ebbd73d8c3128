"""After a NaN epoch the rollback leaves nothing non-finite behind, and training recovers."""

from __future__ import annotations

import math

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import TinyNet, evaluate, make_data, state_copy, train_epoch
from torch.optim import lr_scheduler as sched


def all_finite_state(optimizer) -> bool:
    return all(
        bool(torch.isfinite(value).all())
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def poisoned(data):
    images, labels = data
    images = images.clone()
    images[0, 0, 0, 0] = float("nan")  # one bad pixel: NaN loss, NaN gradients everywhere
    return images, labels


CASES = {
    "sgd-momentum": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), False, None),
    "adam": (lambda p: torch.optim.Adam(p, lr=0.01), False, None),
    "adamw-restore-optimizer": (lambda p: torch.optim.AdamW(p, lr=0.01), True, None),
    "sgd-momentum-restore-optimizer": (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        True,
        None,
    ),
    "adam-steplr": (
        lambda p: torch.optim.Adam(p, lr=0.01),
        False,
        lambda o: sched.StepLR(o, step_size=1, gamma=0.9),
    ),
}


@pytest.mark.parametrize(
    ("make_optimizer", "restore_optimizer", "make_scheduler"), CASES.values(), ids=CASES.keys()
)
def test_training_recovers_to_finite_losses_after_a_nan_epoch(
    make_optimizer, restore_optimizer, make_scheduler
):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = make_optimizer(model.parameters())
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    tuner = DynamicFineTuner(
        model,
        optimizer,
        model.backbone,
        patience=4,
        step=4,
        restore_optimizer=restore_optimizer,
        lr_scheduler=scheduler,
    )
    data, val = make_data(seed=1), make_data(seed=2)

    def epoch(value=None, train_data=data):
        train_epoch(model, optimizer, train_data)
        if scheduler is not None:
            scheduler.step()
        return tuner.step(evaluate(model, val) if value is None else value)

    first = epoch()
    assert first.improved
    for _ in range(3):
        epoch(first.value + 1.0)
    assert epoch(first.value + 1.0).newly_unfrozen == (0, 1, 2, 3)  # the whole model trains
    best = state_copy(model)

    train_epoch(model, optimizer, poisoned(data))
    assert not all_finite_state(optimizer)  # momenta/moments are NaN now
    assert not torch.isfinite(model.backbone[0][0].weight).all()
    diverged = tuner.step(evaluate(model, val))
    assert diverged.diverged and diverged.restore_best and math.isnan(diverged.value)
    assert all_finite_state(optimizer)
    after = state_copy(model)
    for name, tensor in best.items():
        assert torch.equal(after[name], tensor), name

    for _ in range(3):  # at most 4 misses in a row: patience 4 cannot stop the run here
        decision = epoch()
        assert math.isfinite(decision.value)
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert all_finite_state(optimizer)


def test_a_nan_epoch_without_a_best_warns_loudly():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tuner = DynamicFineTuner(model, optimizer, model.backbone, patience=3)
    data = make_data()
    train_epoch(model, optimizer, poisoned(data))
    with pytest.warns(RuntimeWarning, match="there is no earlier best state to roll back to"):
        tuner.step(evaluate(model, data))

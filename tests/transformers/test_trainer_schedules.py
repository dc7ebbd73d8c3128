"""Trainer's LR schedulers through unfreezes: every param group's rate at every step equals the
schedule Trainer would follow without dynft, times the cumulative decay of the decisions taken
so far; ReduceLROnPlateau composes; unfrozen_lr_ratio (without checkpoints) keeps its ratio."""

from __future__ import annotations

import pytest
import torch
import transformers
from dynft_torch.transformers import DynamicFineTuningCallback
from trainer_runs import make_trainer

SCORES = [1.0, 1.1, 1.2, 0.9, 1.0, 1.1]  # unfreeze (x0.5) after evaluations 2, 3 and 5
LEARNING_RATE = 1e-2
STEPS = 24
UNFREEZE_STEPS = (8, 12, 20)


def reference_rates(lr_scheduler_type: str, steps: int = STEPS) -> list[float]:
    """The head's rate after each step under Trainer's schedule, without dynft."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LEARNING_RATE)
    scheduler = transformers.get_scheduler(
        lr_scheduler_type, optimizer, num_warmup_steps=2, num_training_steps=steps
    )
    rates = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return rates


def decay_before(step: int, unfreezes=UNFREEZE_STEPS) -> float:
    """The cumulative decay in force at ``step``: x0.5 per unfreeze at an earlier evaluation."""
    return 0.5 ** sum(unfreeze < step for unfreeze in unfreezes)


def check_unfreezes(callback, unfreezes=UNFREEZE_STEPS) -> None:
    """The decisions unfroze after the evaluations at ``unfreezes`` (one every 4 steps)."""
    assert [4 * d.epoch for d in callback.decisions if d.newly_unfrozen] == list(unfreezes)


@pytest.mark.parametrize("lr_scheduler_type", ["linear", "cosine", "constant_with_warmup"])
def test_rates_follow_the_schedule_times_the_decay(tmp_path, lr_scheduler_type):
    trainer, callback, before = make_trainer(
        "bert", tmp_path, SCORES, lr_scheduler_type=lr_scheduler_type
    )
    trainer.train()
    check_unfreezes(callback)
    expected = reference_rates(lr_scheduler_type)
    assert len(before.rates) == STEPS
    for step, rates in before.rates:
        want = expected[step - 1] * decay_before(step)
        assert rates == pytest.approx([want, want], rel=1e-12, abs=1e-15), step


def test_reduce_lr_on_plateau_composes(tmp_path):
    trainer, callback, before = make_trainer(
        "bert",
        tmp_path,
        SCORES,
        lr_scheduler_type="reduce_lr_on_plateau",
        lr_scheduler_kwargs={"factor": 0.5, "patience": 0},
    )
    trainer.train()
    check_unfreezes(callback)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LEARNING_RATE)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    after_evaluation = []
    for score in SCORES:
        plateau.step(score)
        after_evaluation.append(optimizer.param_groups[0]["lr"])
    for step, rates in before.rates:
        evaluations = (step - 1) // 4  # evaluations before this step (one every 4 steps)
        plateau_rate = after_evaluation[evaluations - 1] if evaluations else LEARNING_RATE
        want = plateau_rate * decay_before(step)
        assert rates == pytest.approx([want, want], rel=1e-12), step


def test_unfrozen_lr_ratio_without_checkpoints(tmp_path):
    trainer, callback, before = make_trainer(
        "bert",
        tmp_path,
        SCORES[:3],
        num_train_epochs=3,
        callback=DynamicFineTuningCallback(patience=1, step=1, decay=0.5, unfrozen_lr_ratio=0.1),
    )
    trainer.train()
    check_unfreezes(callback, (8, 12))
    groups = trainer.optimizer.param_groups
    assert len(groups) == 6  # Trainer's two, then weights and biases/norms of groups 2 and 1
    assert len(trainer.lr_scheduler.lr_lambdas) == len(groups)
    expected = reference_rates("linear", steps=12)
    for step, rates in before.rates:
        head = expected[step - 1] * decay_before(step)
        added = (len(rates) - 2) // 2
        assert rates[:2] == pytest.approx([head, head], rel=1e-12), step
        assert rates[2:] == pytest.approx([0.1 * head] * 2 * added, rel=1e-12), step
        assert added == (0 if step <= 8 else 1 if step <= 12 else 2)
    decay = set(trainer.get_decay_parameter_names(trainer.model))
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    unfrozen = {n for g in callback.tuner.groups[1:] for n in g.parameter_names}
    for index, group in enumerate(groups):
        for parameter in group["params"]:
            name = names[id(parameter)]
            assert group["weight_decay"] == (0.05 if name in decay else 0.0), name
            assert (index >= 2) == (name in unfrozen), name

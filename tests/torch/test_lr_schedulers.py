"""Every torch LR scheduler stays on schedule through unfreezes, new param groups and decays.

Criterion, per scheduler class, on a real tiny model: after every scheduler step the rate of
each user param group equals the rate of the same group in an undisturbed run (same optimizer and
scheduler, no tuner) times the cumulative decay; each param group the tuner adds follows the
group whose settings it copies, times ``unfrozen_lr_ratio`` as well.
"""

from __future__ import annotations

import pytest
import torch
from dynft_torch import SUPPORTED_LR_SCHEDULERS, DynamicFineTuner, register_lr_scheduler
from tiny_models import TinyNet, make_data
from torch import nn
from torch.optim import lr_scheduler as sched

# patience 1, step 2 over 4 groups: unfreezes after epochs 2 and 4, then improvements to the end
VALUES = (1.0, 1.1, 0.9, 1.0, 0.8, 0.7, 0.6)
BATCHES = 3
LR0 = 0.1


def head_only_split_optimizer(model: TinyNet) -> torch.optim.Optimizer:
    """SGD with momentum on the head, weights decayed and the bias not (two user groups)."""
    return torch.optim.SGD(
        [
            {"params": [model.head.weight], "weight_decay": 0.01},
            {"params": [model.head.bias], "weight_decay": 0.0},
        ],
        lr=LR0,
        momentum=0.9,
    )


def cosine_then(optimizer, eta_min):
    # the milestone comes after the first unfreeze: the cosine restarts from its decayed base
    warmup = sched.LinearLR(optimizer, start_factor=0.2, total_iters=3)
    cosine = sched.CosineAnnealingLR(optimizer, T_max=5, eta_min=eta_min)
    return sched.SequentialLR(optimizer, [warmup, cosine], milestones=[3])


# (id, factory, steps per batch, unfrozen_lr_ratio)
CASES = [
    ("LambdaLR", lambda o: sched.LambdaLR(o, lambda e: 1 / (1 + e)), False, 0.1),
    ("MultiplicativeLR", lambda o: sched.MultiplicativeLR(o, lambda e: 0.9), False, 0.1),
    ("StepLR", lambda o: sched.StepLR(o, step_size=2, gamma=0.5), False, 0.1),
    ("MultiStepLR", lambda o: sched.MultiStepLR(o, milestones=[2, 4], gamma=0.5), False, 0.1),
    ("ConstantLR", lambda o: sched.ConstantLR(o, factor=0.5, total_iters=3), False, 0.1),
    ("LinearLR", lambda o: sched.LinearLR(o, start_factor=0.2, total_iters=4), False, 0.1),
    ("ExponentialLR", lambda o: sched.ExponentialLR(o, gamma=0.8), False, 0.1),
    ("PolynomialLR", lambda o: sched.PolynomialLR(o, total_iters=6, power=2.0), False, 0.1),
    ("CosineAnnealingLR", lambda o: sched.CosineAnnealingLR(o, T_max=4), False, 0.1),
    (
        "CosineAnnealingLR-eta_min",
        lambda o: sched.CosineAnnealingLR(o, T_max=4, eta_min=0.01),
        False,
        1.0,
    ),
    (
        "CosineAnnealingWarmRestarts",
        lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2),
        True,
        0.1,
    ),
    (
        "CosineAnnealingWarmRestarts-eta_min",
        lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=2, eta_min=0.01),
        True,
        1.0,
    ),
    (
        "CyclicLR",
        lambda o: sched.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2, mode="triangular2"),
        True,
        0.1,
    ),
    (
        "OneCycleLR",
        lambda o: sched.OneCycleLR(o, max_lr=0.1, total_steps=len(VALUES) * BATCHES),
        True,
        0.1,
    ),
    (
        "ReduceLROnPlateau-min_lr",
        lambda o: sched.ReduceLROnPlateau(o, factor=0.5, patience=0, min_lr=0.03),
        False,
        0.1,
    ),
    ("SequentialLR-eta_min", lambda o: cosine_then(o, 0.005), False, 1.0),
    ("SequentialLR", lambda o: cosine_then(o, 0.0), False, 0.1),
    (
        "ChainedScheduler",
        lambda o: sched.ChainedScheduler(
            [sched.ConstantLR(o, factor=0.5, total_iters=2), sched.ExponentialLR(o, gamma=0.9)]
        ),
        False,
        0.1,
    ),
]


def test_the_cases_cover_every_supported_class():
    covered = {
        type(scheduler).__name__
        for _, factory, _, _ in CASES
        for scheduler in [factory(head_only_split_optimizer(TinyNet()))]
    }
    assert covered == {cls.__name__ for cls in SUPPORTED_LR_SCHEDULERS}


def step_scheduler(scheduler, value=None):
    if isinstance(scheduler, sched.ReduceLROnPlateau):
        scheduler.step(value)
    else:
        scheduler.step()


def train_batch(model, optimizer, data):
    images, labels = data
    model.train()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


@pytest.mark.parametrize(
    ("factory", "per_batch", "ratio"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rates_follow_the_undisturbed_schedule_times_the_decay(factory, per_batch, ratio):
    torch.manual_seed(0)
    model, reference = TinyNet(), TinyNet()
    optimizer = head_only_split_optimizer(model)
    undisturbed = head_only_split_optimizer(reference)
    scheduler, plain = factory(optimizer), factory(undisturbed)
    tuner = DynamicFineTuner(
        model,
        optimizer,
        model.backbone,
        patience=1,
        step=2,
        decay=0.2,
        unfrozen_lr_ratio=ratio,
        lr_scheduler=scheduler,
    )
    data = make_data()
    momentum_key = "momentum"

    def check() -> None:
        factor = tuner.scheduler.lr_scale
        template = [0, 1] + [p.template for p in tuner._placer.placements]
        scale = [factor] * 2 + [factor * ratio] * (len(template) - 2)
        rates = [g["lr"] for g in optimizer.param_groups]
        expected = [
            undisturbed.param_groups[t]["lr"] * s for t, s in zip(template, scale, strict=True)
        ]
        assert rates == pytest.approx(expected, rel=1e-9, abs=1e-15)
        momenta = [g[momentum_key] for g in optimizer.param_groups]
        assert momenta == pytest.approx(
            [undisturbed.param_groups[t][momentum_key] for t in template]
        )

    for value in VALUES:
        for _ in range(BATCHES):
            train_batch(model, optimizer, data)
            train_batch(reference, undisturbed, data)
            if per_batch:
                scheduler.step(), plain.step()
                check()
        if not per_batch:
            step_scheduler(scheduler, value), step_scheduler(plain, value)
            check()
        decision = tuner.step(value)
        check()
        assert scheduler._last_lr == pytest.approx([g["lr"] for g in optimizer.param_groups])
    unfreezes = [d.epoch for d in tuner.scheduler.history if d.newly_unfrozen]
    assert unfreezes == [2, 4] and not decision.stop
    # TinyNet's convs have no bias and BatchNorm stays frozen: each unfreeze added one group
    # of conv weights, which follows the decayed head-weight group
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0, 0.01, 0.01]


def test_lambda_lr_with_groups_added_later_no_longer_crashes_and_keeps_the_lambda():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    warmup = sched.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
    tuner = DynamicFineTuner(
        model, optimizer, model.backbone, patience=1, step=4, lr_scheduler=warmup
    )
    tuner.step(1.0)
    assert tuner.step(2.0).newly_unfrozen == (0, 1, 2, 3)
    optimizer.step()
    warmup.step()  # "zip() argument 2 is shorter than argument 1" before the adapter kept it
    assert len(warmup.lr_lambdas) == len(warmup.base_lrs) == len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


def test_unsupported_attached_unpassed_and_foreign_schedulers_are_refused():
    class Custom(sched.StepLR):
        pass

    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    custom = Custom(optimizer, step_size=2)
    with pytest.raises(
        ValueError, match=r"Custom is not one dynft knows .*register_lr_scheduler\(Custom\)"
    ):
        DynamicFineTuner(model, optimizer, model.backbone, lr_scheduler=custom)
    with pytest.raises(ValueError, match=r"str is not one dynft knows .*not a str$"):
        DynamicFineTuner(model, optimizer, model.backbone, lr_scheduler="cosine")
    with pytest.raises(ValueError, match="attached to this optimizer but was not passed"):
        DynamicFineTuner(model, optimizer, model.backbone)
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="attached to another optimizer"):
        DynamicFineTuner(model, optimizer, model.backbone, lr_scheduler=sched.StepLR(other, 2))
    cosine = sched.CosineAnnealingLR(optimizer, T_max=3, eta_min=0.01)
    with pytest.raises(ValueError, match=r"eta_min=0.01\) has one floor .* unfrozen_lr_ratio"):
        DynamicFineTuner(
            model, optimizer, model.backbone, lr_scheduler=cosine, unfrozen_lr_ratio=0.5
        )
    assert all(p.requires_grad for p in model.parameters())  # refused before freezing anything
    register_lr_scheduler(Custom)
    tuner = DynamicFineTuner(model, optimizer, model.backbone, lr_scheduler=[custom, cosine])
    assert tuner.lr_schedulers == (custom, cosine)
    with pytest.raises(TypeError, match="needs an LRScheduler subclass"):
        register_lr_scheduler(int)


def test_a_scheduler_built_after_the_tuner_is_detected_and_can_be_handed_over():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1)
    tuner = DynamicFineTuner(model, optimizer, model.backbone, patience=1, step=1)
    scheduler = sched.LambdaLR(optimizer, lambda e: 0.5**e)
    train_batch(model, optimizer, make_data())
    with pytest.raises(RuntimeError, match=r"built on the tuner's optimizer after the tuner"):
        tuner.step(1.0)
    assert tuner.scheduler.epoch == 0  # the refused step changed nothing
    tuner.set_optimizer(optimizer, lr_scheduler=scheduler)
    tuner.step(1.0)
    assert tuner.step(2.0).newly_unfrozen == (3,)
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * 0.9 * 0.5] * 2)

"""Unfrozen parameters in the user's optimizer: weight-decay split, overrides, per-group and
ratio learning rates, named param groups, BatchNorm training and the zero-weight warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import TinyNet, make_data, state_copy, train_epoch


def zero_gradient_step(model, optimizer) -> None:
    """One AdamW step with every trainable gradient zero: only decoupled weight decay acts."""
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()


def unfreeze_all(tuner) -> None:
    tuner.step(1.0)
    assert tuner.step(2.0).newly_unfrozen == (0, 1, 2, 3)


def test_unfrozen_parameters_follow_the_weight_decay_split_not_param_group_zero():
    torch.manual_seed(0)
    model = TinyNet(conv_bias=True)
    # group 0 is the no-decay group: copying param_groups[0] would leave the weights undecayed
    optimizer = torch.optim.AdamW(
        [
            {"params": [model.head.bias], "weight_decay": 0.0},
            {"params": [model.head.weight], "weight_decay": 0.5},
        ],
        lr=0.1,
    )
    tuner = DynamicFineTuner(
        model, optimizer, model.backbone, patience=1, step=4, train_batchnorm=True
    )
    unfreeze_all(tuner)
    added = optimizer.param_groups[2:]
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in added}
    conv_weights = {id(model.backbone[b][0].weight) for b in range(4)}
    one_d = {
        id(p)
        for b in range(4)
        for p in (model.backbone[b][0].bias, *model.backbone[b][1].parameters())
    }
    assert by_decay == {0.0: one_d, 0.5: conv_weights}
    before = state_copy(model)
    zero_gradient_step(model, optimizer)
    after = state_copy(model)
    for block in range(4):
        weight = f"backbone.{block}.0.weight"
        assert torch.allclose(after[weight], before[weight] * (1 - 0.1 * 0.9 * 0.5))
        for name in (f"backbone.{block}.0.bias", f"backbone.{block}.1.weight"):
            assert torch.equal(after[name], before[name]), name


def test_param_group_fn_overrides_settings_per_parameter():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=0.1, weight_decay=0.01)

    def settings(name, parameter):
        return {"weight_decay": 0.0} if name.startswith("backbone.3.") else None

    tuner = DynamicFineTuner(
        model, optimizer, model.backbone, patience=1, step=4, param_group_fn=settings
    )
    unfreeze_all(tuner)
    groups = [(g["weight_decay"], [id(p) for p in g["params"]]) for g in optimizer.param_groups]
    assert groups[1:] == [
        (0.01, [id(model.backbone[b][0].weight) for b in range(3)]),
        (0.0, [id(model.backbone[3][0].weight)]),
    ]


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        ({"lr": 1e-4}, ValueError, r"returned 'lr': the rates of unfrozen parameters follow"),
        ({"decay": 0.1}, ValueError, r"unknown setting 'decay'; the optimizer's settings are"),
        (0.1, TypeError, r"must return a dict of group settings or None, got float"),
    ],
)
def test_param_group_fn_errors_are_raised_at_construction(returned, error, match):
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        DynamicFineTuner(model, optimizer, model.backbone, param_group_fn=lambda n, p: returned)
    assert all(p.requires_grad for p in model.parameters())


def test_a_parameter_with_no_group_to_follow_is_refused_with_the_hook_named():
    model = TinyNet(conv_bias=True)
    model.add_module("side", torch.nn.Linear(2, 2, bias=False))
    optimizer = torch.optim.AdamW(
        [
            {"params": [model.head.weight], "weight_decay": 0.1},
            {"params": [model.side.weight], "weight_decay": 0.0},
        ],
        lr=0.1,
    )
    with pytest.raises(
        ValueError,
        match=r"no param group of the optimizer holds a 1-D .*"
        r"'backbone.0.0.bias'.* param_group_fn=",
    ):
        DynamicFineTuner(model, optimizer, model.backbone)
    assert all(p.requires_grad for p in model.parameters())
    stranger = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer.add_param_group({"params": [stranger]})
    with pytest.raises(ValueError, match="1 tensors that are not parameters of the model"):
        DynamicFineTuner(model, optimizer, model.backbone)


def test_user_per_group_rates_are_kept_and_decay_together_at_ratio_one():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(
        [
            {"params": model.head.parameters(), "lr": 0.1},
            {"params": model.backbone.parameters(), "lr": 0.01},
        ],
        momentum=0.9,
    )
    tuner = DynamicFineTuner(model, optimizer, model.backbone, patience=1, step=2)
    train_epoch(model, optimizer, make_data())
    tuner.step(1.0)
    tuner.step(2.0)
    assert len(optimizer.param_groups) == 2
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.09, 0.009])
    before = state_copy(model)
    train_epoch(model, optimizer, make_data())
    after = state_copy(model)
    assert not torch.equal(after["backbone.3.0.weight"], before["backbone.3.0.weight"])
    assert torch.equal(after["backbone.1.0.weight"], before["backbone.1.0.weight"])


def test_unfrozen_lr_ratio_moves_held_parameters_and_keeps_their_optimizer_state():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tuner = DynamicFineTuner(
        model, optimizer, model.backbone, patience=1, step=2, unfrozen_lr_ratio=0.1, decay=0.5
    )
    data = make_data()
    train_epoch(model, optimizer, data)
    tuner.step(1.0)
    momentum = optimizer.state[model.head.weight]["momentum_buffer"].clone()
    assert tuner.step(2.0).newly_unfrozen == (2, 3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.005])
    moved = {id(model.backbone[b][0].weight) for b in (2, 3)}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == moved
    assert moved.isdisjoint(id(p) for p in optimizer.param_groups[0]["params"])
    assert torch.equal(optimizer.state[model.head.weight]["momentum_buffer"], momentum)
    train_epoch(model, optimizer, data)
    tuner.step(3.0)  # second unfreeze: ratio kept, everything decayed again
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.025, 0.0025, 0.0025])


def test_named_param_groups_get_names_for_the_new_groups():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.head.named_parameters(), lr=0.01)
    tuner = DynamicFineTuner(model, optimizer, model.backbone, patience=1, step=1)
    tuner.step(1.0)
    tuner.step(2.0)
    assert optimizer.param_groups[1]["param_names"] == ["backbone.3.0.weight"]
    train_epoch(model, optimizer, make_data())
    assert optimizer.state_dict()["param_groups"][1]["param_names"] == ["backbone.3.0.weight"]


def test_train_batchnorm_lets_unfrozen_batchnorm_train_and_keeps_the_others_frozen():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuner = DynamicFineTuner(
        model, optimizer, model.backbone, patience=1, step=1, train_batchnorm=True
    )
    initial = state_copy(model)
    tuner.step(1.0)
    tuner.step(2.0)  # group 3 unfrozen, its BatchNorm released
    train_epoch(model, optimizer, make_data())
    after = state_copy(model)
    for name in ("backbone.3.1.weight", "backbone.3.1.running_mean", "backbone.3.1.bias"):
        assert not torch.equal(after[name], initial[name]), name
    for name in ("backbone.2.1.weight", "backbone.2.1.running_mean", "backbone.2.0.weight"):
        assert torch.equal(after[name], initial[name]), name
    assert model.backbone[3][1].training and not model.backbone[2][1].training
    assert "backbone.3.1.running_var" in tuner.snapshot.tensors  # a rollback restores it too


def test_a_frozen_zero_weight_batchnorm_is_reported():
    model = TinyNet()
    with torch.no_grad():
        model.backbone[2][1].weight.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(
        UserWarning,
        match=r"1 frozen BatchNorm layer\(s\) have an all-zero weight "
        r"\(backbone.2.1\)",
    ):
        DynamicFineTuner(model, optimizer, model.backbone)
    quiet = TinyNet()
    with torch.no_grad():
        quiet.backbone[2][1].weight.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DynamicFineTuner(
            quiet, torch.optim.SGD(quiet.parameters(), lr=0.1), "backbone", train_batchnorm=True
        )

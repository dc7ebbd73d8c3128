"""DynamicFineTuner on a tiny CNN: freezing, unfreezing, learning rates, snapshots, rollbacks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import (
    TinyNet,
    assert_states_equal,
    make_data,
    state_copy,
    train_epoch,
)

LR0 = 0.05


def backbone_names(model: TinyNet, block: int, kind: str = "conv") -> list[str]:
    """Parameter names of one backbone block: its conv or its BatchNorm."""
    index = 0 if kind == "conv" else 1
    prefix = f"backbone.{block}.{index}."
    return [n for n, _ in model.named_parameters() if n.startswith(prefix)]


@dataclass
class Trace:
    """What :func:`run_trace` saw, epoch by epoch."""

    model: TinyNet
    optimizer: torch.optim.Optimizer
    tuner: DynamicFineTuner
    decisions: list = field(default_factory=list)
    states: list = field(default_factory=list)  # full state right after each step()
    before: list = field(default_factory=list)  # full state right before each step()
    lrs: list = field(default_factory=list)  # every param group's lr after each step()


def run_trace(values, optimizer_factory=None, **options) -> Trace:
    """Train TinyNet for real while a scripted monitor drives the tuner."""
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = (optimizer_factory or (lambda m: torch.optim.SGD(m.parameters(), lr=LR0)))(model)
    tuner = DynamicFineTuner(model, optimizer, backbone=model.backbone, **options)
    trace = Trace(model, optimizer, tuner)
    data = make_data()
    for value in values:
        train_epoch(model, optimizer, data)
        trace.before.append(state_copy(model))
        trace.decisions.append(tuner.step(value))
        trace.states.append(state_copy(model))
        trace.lrs.append([group["lr"] for group in optimizer.param_groups])
        if trace.decisions[-1].stop:
            break
    return trace


def test_freezes_every_group_and_leaves_the_head_trainable():
    model = TinyNet()
    tuner = DynamicFineTuner(model, torch.optim.SGD(model.parameters(), lr=0.1), model.backbone)
    assert [g.name for g in tuner.groups] == [f"backbone.{i}" for i in range(4)]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["head.bias", "head.weight"]


def test_scripted_trace_unfreezes_decays_and_rolls_back():
    values = [1.0, 0.8, 0.9, 0.95, 0.7, 0.75, 0.76, 0.77, 0.78]
    t = run_trace(values, patience=2, step=1, decay=0.1, max_epochs=20)
    assert [d.newly_unfrozen for d in t.decisions] == [(), (), (), (3,), (), (), (2,), (), (1,)]
    assert [d.improved for d in t.decisions] == [True, True, False, False, True] + [False] * 4

    # LR = lr0 * (1 - decay) ** r on every param group after every decision
    unfreezes = 0
    for decision, lrs in zip(t.decisions, t.lrs, strict=True):
        unfreezes += bool(decision.newly_unfrozen)
        assert lrs == [pytest.approx(LR0 * 0.9**unfreezes, rel=1e-12)]
    assert unfreezes == 3

    # post-rollback weights equal the state at the best epoch (bit for bit, everything)
    assert_states_equal(t.states[3], t.states[1])  # epoch 4 restored epoch 2
    assert_states_equal(t.states[6], t.states[4])  # epoch 7 restored epoch 5
    assert_states_equal(t.states[8], t.states[4])  # epoch 9 restored epoch 5 (best not reset)
    # and differ from the weights trained since (so the rollback really did something)
    assert not torch.equal(t.before[6]["head.weight"], t.states[4]["head.weight"])
    # group 3 trained during epochs 5-7, so the rollback at epoch 9 had to restore it too
    name = backbone_names(t.model, 3)[0]
    assert not torch.equal(t.before[8][name], t.states[4][name])

    # frozen groups are bit-identical to the initial weights; unfrozen ones trained
    torch.manual_seed(0)
    initial = TinyNet()
    for block in (0, 1):
        assert_states_equal(t.states[-1], initial.state_dict(), backbone_names(t.model, block))
    for block in (2, 3):
        for name in backbone_names(t.model, block):
            assert t.model.get_parameter(name).requires_grad
    trained_conv = backbone_names(t.model, 3)[0]
    assert not torch.equal(t.states[6][trained_conv], initial.state_dict()[trained_conv])


def test_batchnorm_stays_in_inference_mode_and_frozen():
    values = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
    t = run_trace(values, patience=1, step=2, max_epochs=20)
    assert t.decisions[-1].num_unfrozen == 4
    torch.manual_seed(0)
    initial = TinyNet().state_dict()
    bn_tensors = [n for n in initial if ".1." in n and n.startswith("backbone.")]
    assert any("running_mean" in n for n in bn_tensors)
    assert any("num_batches_tracked" in n for n in bn_tensors)
    for state in t.states:
        assert_states_equal(state, initial, bn_tensors)
    assert len(t.tuner.batchnorm.layers) == 4
    for layer in t.tuner.batchnorm.layers.values():
        assert not any(p.requires_grad for p in layer.parameters())
    t.model.train()
    t.model(torch.randn(2, 3, 8, 8))
    assert not any(layer.training for layer in t.tuner.batchnorm.layers.values())
    assert t.model.head.training


def test_final_model_is_the_best_epoch_at_stop():
    values = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]
    t = run_trace(values, patience=1, step=2, max_epochs=50)
    assert t.decisions[-1].stop and t.decisions[-1].restore_best
    assert t.tuner.scheduler.best_epoch == 2
    assert_states_equal(t.states[-1], t.states[1])


def test_max_epochs_stop_restores_best():
    t = run_trace([1.0, 0.4, 0.6], patience=5, max_epochs=3)
    assert t.decisions[-1].stop and t.decisions[-1].epoch == 3
    assert_states_equal(t.states[-1], t.states[1])


def test_accepts_float_and_zero_dim_tensor_and_rejects_vectors():
    model = TinyNet()
    tuner = DynamicFineTuner(model, torch.optim.SGD(model.parameters(), lr=0.1), model.backbone)
    assert tuner.step(torch.tensor(0.5)).value == 0.5
    assert tuner.step(0.25).improved
    with pytest.raises(TypeError):
        tuner.step(torch.tensor([0.1, 0.2]))


def test_snapshot_holds_only_what_can_change():
    model = TinyNet()
    tuner = DynamicFineTuner(model, torch.optim.SGD(model.parameters(), lr=0.1), model.backbone)
    tuner.step(1.0)
    head_bytes = sum(p.numel() * 4 for p in model.head.parameters())
    assert tuner.snapshot.nbytes == head_bytes
    assert sorted(tuner.snapshot.tensors) == ["head.bias", "head.weight"]
    assert all(t.device.type == "cpu" for t in tuner.snapshot.tensors.values())


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda params: torch.optim.AdamW(params, lr=0.1, weight_decay=0.5),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
def test_frozen_parameters_in_the_optimizer_get_no_momentum_or_weight_decay(make_optimizer):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = make_optimizer(model.parameters())
    DynamicFineTuner(model, optimizer, model.backbone)
    initial = state_copy(model)
    for _ in range(3):
        train_epoch(model, optimizer, make_data())
    frozen = [n for n in initial if n.startswith("backbone.")]
    assert_states_equal(state_copy(model), initial, frozen)
    assert not torch.equal(model.head.weight, initial["head.weight"])
    assert all(p.grad is None for p in model.backbone.parameters())


def test_head_only_optimizer_gets_newly_unfrozen_parameters_by_identity():
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # equal values in two groups: matching by value would pick both
        for a, b in zip(
            model.backbone[2].parameters(), model.backbone[3].parameters(), strict=True
        ):
            a.copy_(b)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=0.01)
    tuner = DynamicFineTuner(model, optimizer, model.backbone, patience=1, step=1, decay=0.5)
    data = make_data()
    train_epoch(model, optimizer, data)
    tuner.step(1.0)
    decision = tuner.step(2.0)
    assert decision.newly_unfrozen == (3,)
    assert len(optimizer.param_groups) == 2
    added = optimizer.param_groups[1]["params"]
    conv3 = model.backbone[3][0].weight
    assert len(added) == 1 and added[0] is conv3
    assert [g["lr"] for g in optimizer.param_groups] == [0.005, 0.005]
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    conv2_before = model.backbone[2][0].weight.detach().clone()
    conv3_before = conv3.detach().clone()
    train_epoch(model, optimizer, data)
    assert not torch.equal(conv3, conv3_before)
    assert torch.equal(model.backbone[2][0].weight, conv2_before)
    # a second unfreeze adds only the new group; all-params optimizers never grow
    tuner.step(3.0)
    assert len(optimizer.param_groups) == 3
    assert optimizer.param_groups[2]["params"][0] is model.backbone[2][0].weight


def test_all_params_optimizer_trains_newly_unfrozen_without_new_groups():
    values = [1.0, 1.1]
    t = run_trace(values, patience=1, step=1)
    assert t.decisions[-1].newly_unfrozen == (3,)
    assert len(t.optimizer.param_groups) == 1
    train_epoch(t.model, t.optimizer, make_data())
    name = backbone_names(t.model, 3)[0]
    assert not torch.equal(t.model.get_parameter(name), t.states[-1][name])


def test_an_unfreeze_of_several_groups_trains_every_one_of_them():
    t = run_trace([1.0, 1.1], patience=1, step=2)
    assert t.decisions[-1].newly_unfrozen == (2, 3)
    before = state_copy(t.model)
    train_epoch(t.model, t.optimizer, make_data())
    after = state_copy(t.model)
    for block in (2, 3):
        for name in backbone_names(t.model, block):
            assert not torch.equal(after[name], before[name]), f"{name} did not train"
    # Blocks 0-1 are still frozen, and so is the BatchNorm (index 1) of every block.
    still_frozen = [n for n in before if n.startswith(("backbone.0.", "backbone.1."))]
    still_frozen += [n for n in before if n.startswith("backbone.") and n.split(".")[2] == "1"]
    assert_states_equal(after, before, still_frozen)


def test_restore_optimizer_rolls_momentum_back_and_keeps_the_decayed_lr():
    factory = lambda m: torch.optim.SGD(m.parameters(), lr=LR0, momentum=0.9)  # noqa: E731
    t = run_trace([1.0, 0.5], factory, patience=1, step=1, restore_optimizer=True)
    head = t.tuner.model.head.weight
    momentum_at_best = t.optimizer.state[head]["momentum_buffer"].clone()
    train_epoch(t.tuner.model, t.optimizer, make_data())
    assert not torch.equal(t.optimizer.state[head]["momentum_buffer"], momentum_at_best)
    decision = t.tuner.step(0.9)
    assert decision.restore_best
    assert torch.equal(t.optimizer.state[head]["momentum_buffer"], momentum_at_best)
    conv = t.tuner.model.backbone[3][0].weight
    assert conv not in t.optimizer.state  # unfrozen after the snapshot: no state to restore
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(LR0 * 0.9, rel=1e-12)


def test_default_rollback_keeps_the_optimizer_state():
    factory = lambda m: torch.optim.SGD(m.parameters(), lr=LR0, momentum=0.9)  # noqa: E731
    t = run_trace([1.0, 0.5], factory, patience=1, step=1)
    train_epoch(t.model, t.optimizer, make_data())
    momentum = t.optimizer.state[t.model.head.weight]["momentum_buffer"].clone()
    assert t.tuner.step(0.9).restore_best
    assert torch.equal(t.optimizer.state[t.model.head.weight]["momentum_buffer"], momentum)


def test_initial_lr_is_decayed_too():
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.param_groups[0]["initial_lr"] = 0.2
    tuner = DynamicFineTuner(model, optimizer, model.backbone, patience=1, decay=0.25)
    tuner.step(1.0)
    tuner.step(1.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.075)
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.15)


def test_optimizer_errors_are_clear():
    model = TinyNet()
    stranger = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="not parameters of the model"):
        DynamicFineTuner(
            model, torch.optim.SGD([stranger, *model.parameters()], lr=0.1), "backbone"
        )
    twice = torch.optim.SGD(model.parameters(), lr=0.1)
    twice.param_groups[0]["params"].append(model.head.weight)  # torch refuses it in add_param_group
    with pytest.raises(ValueError, match="appears twice in the optimizer"):
        DynamicFineTuner(model, twice, model.backbone)
    with pytest.raises(ValueError, match="patience must be an integer >= 1, got 0"):
        DynamicFineTuner(
            model, torch.optim.SGD(model.parameters(), lr=0.1), model.backbone, patience=0
        )
    with pytest.raises(ValueError, match="head must stay trainable"):
        DynamicFineTuner(
            model, torch.optim.SGD(model.parameters(), lr=0.1), groups=["backbone", "head"]
        )


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        (lambda m: ("model", torch.optim.SGD(m.parameters(), lr=0.1)), TypeError, "got str"),
        (lambda m: (m, [*m.parameters()]), TypeError, "torch.optim.Optimizer, got list"),
        (
            lambda m: (m, torch.optim.SGD(m.parameters(), lr=0.1), "backbon"),
            ValueError,
            r"unknown backbone module name 'backbon'.*similar names: \['backbone'",
        ),
    ],
)
def test_wrong_types_and_misspelt_names_are_refused_by_name(arguments, error, match):
    model = TinyNet()
    with pytest.raises(error, match=match):
        DynamicFineTuner(*arguments(model))
    assert all(p.requires_grad for p in model.parameters())


def test_a_param_group_fn_that_is_not_callable_is_refused():
    model = TinyNet()
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"param_group_fn must be callable .* got str"):
        DynamicFineTuner(model, optimizer, model.backbone, param_group_fn="weight_decay")
    assert all(p.requires_grad for p in model.parameters())


def test_a_param_group_fn_that_would_never_be_called_is_refused():
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)  # holds every parameter
    with pytest.raises(ValueError, match="param_group_fn would never be called"):
        DynamicFineTuner(
            model, optimizer, model.backbone, param_group_fn=lambda n, p: {"weight_decay": 0.5}
        )
    assert all(p.requires_grad for p in model.parameters())
    # With a ratio the unfrozen parameters move to new groups, which the function configures.
    DynamicFineTuner(
        model,
        optimizer,
        model.backbone,
        unfrozen_lr_ratio=0.1,
        param_group_fn=lambda n, p: {"weight_decay": 0.5},
    )


def _head_only_tuner(groups: str, **options) -> DynamicFineTuner:
    model = TinyNet()
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1)
    return DynamicFineTuner(model, optimizer, backbone="backbone", groups=groups, **options)


def test_groups_of_batchnorm_only_warn_unless_batchnorm_trains():
    with pytest.warns(UserWarning, match=r"groups \[1, 3, 5, 7\] \(backbone.0.1, .*only BatchNorm"):
        _head_only_tuner("modules")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _head_only_tuner("layers")
        _head_only_tuner("modules", train_batchnorm=True)

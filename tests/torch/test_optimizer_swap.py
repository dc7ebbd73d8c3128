"""No silent no-op: a replaced optimizer is detected and can be handed over; an optimizer that
trains nothing is refused; DataParallel is unwrapped."""

from __future__ import annotations

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import TinyNet, make_data, state_copy, train_epoch
from torch import nn


def test_a_re_created_optimizer_is_detected_before_any_decision():
    torch.manual_seed(0)
    model = TinyNet()
    first = torch.optim.SGD(model.parameters(), lr=0.1)
    tuner = DynamicFineTuner(model, first, model.backbone, patience=1, step=1)
    tuner.step(1.0)  # no training in between: nothing changed, nothing to report
    replacement = torch.optim.Adam(model.parameters(), lr=0.01)
    train_epoch(model, replacement, make_data())
    with pytest.raises(
        RuntimeError,
        match=r"another optimizer is training the model .*"
        r"tuner.set_optimizer\(new_optimizer",
    ):
        tuner.step(2.0)
    assert tuner.scheduler.epoch == 1 and tuner.scheduler.num_unfrozen == 0


def test_set_optimizer_hands_over_unfrozen_groups_decays_and_rollbacks():
    torch.manual_seed(0)
    model = TinyNet()
    first = torch.optim.SGD(model.head.parameters(), lr=0.1)
    tuner = DynamicFineTuner(
        model, first, model.backbone, patience=1, step=1, decay=0.5, restore_optimizer=True
    )
    data = make_data()
    train_epoch(model, first, data)
    tuner.step(1.0)
    assert tuner.step(2.0).newly_unfrozen == (3,)
    second = torch.optim.SGD(model.head.parameters(), lr=0.02, momentum=0.9)
    tuner.set_optimizer(second)
    conv3 = model.backbone[3][0].weight
    assert [p for g in second.param_groups[1:] for p in g["params"]] == [conv3]
    assert [g["lr"] for g in second.param_groups] == [0.02, 0.02]
    before = state_copy(model)
    train_epoch(model, second, data)
    assert not torch.equal(conv3, before["backbone.3.0.weight"])
    assert tuner.step(3.0).newly_unfrozen == (2,)  # no error: the tuner watches `second` now
    assert [g["lr"] for g in second.param_groups] == pytest.approx([0.01, 0.01, 0.01])
    assert [g["lr"] for g in first.param_groups] == pytest.approx([0.05, 0.05])
    assert second.state == {}  # rolled back before any improvement under `second`: reset
    assert len(second.param_groups) == 3 and len(first.param_groups) == 2


def test_an_optimizer_training_nothing_is_refused():
    model = TinyNet()
    backbone_only = torch.optim.SGD(model.backbone.parameters(), lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"holds none of the 2 trainable parameters "
        r"\(head.weight, head.bias\): it would train nothing",
    ):
        DynamicFineTuner(model, backbone_only, model.backbone)
    assert all(p.requires_grad for p in model.parameters())
    tuner = DynamicFineTuner(model, torch.optim.SGD(model.head.parameters(), lr=0.1), "backbone")
    with pytest.raises(ValueError, match="holds none of the"):
        tuner.set_optimizer(torch.optim.SGD([model.backbone[0][0].weight], lr=0.1))


def test_data_parallel_is_unwrapped():
    torch.manual_seed(0)
    model = TinyNet()
    wrapped = nn.DataParallel(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    tuner = DynamicFineTuner(wrapped, optimizer, "backbone", patience=1, step=1)
    assert tuner.model is model
    assert [g.name for g in tuner.groups] == [f"backbone.{i}" for i in range(4)]
    train_epoch(wrapped, optimizer, make_data())
    tuner.step(1.0)
    assert tuner.step(2.0).newly_unfrozen == (3,)
    before = state_copy(model)
    train_epoch(wrapped, optimizer, make_data())
    assert not torch.equal(model.backbone[3][0].weight, before["backbone.3.0.weight"])
    assert torch.equal(model.backbone[2][0].weight, before["backbone.2.0.weight"])

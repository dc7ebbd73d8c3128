"""The Lightning callback with the optimizers and schedulers of configure_optimizers: every
scheduler of the managed optimizer stays on schedule, several optimizers, per-group rates, the
weight-decay split and trainable BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

pl = pytest.importorskip("lightning.pytorch")
from dynft_torch.lightning import DynamicFineTuning  # noqa: E402
from lightning_models import OPTIONS, ScriptedModule, fit, loaders, trainer  # noqa: E402


class Rates(pl.Callback):
    """After every training batch: every param group's rate, and dynft's cumulative factor."""

    def __init__(self, dynft: DynamicFineTuning | None = None) -> None:
        self.dynft = dynft
        self.rates: list[list[float]] = []
        self.scales: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rates.append([group["lr"] for group in trainer.optimizers[0].param_groups])
        self.scales.append(1.0 if self.dynft is None else self.dynft.tuner.scheduler.lr_scale)


def head_only(lr: float = 0.05):
    return lambda module: torch.optim.SGD(module.net.head.parameters(), lr=lr, momentum=0.9)


SCHEDULES = {
    "a per-step warm-up (LambdaLR) and a per-epoch StepLR": lambda optimizer: [
        {
            "scheduler": sched.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5)),
            "interval": "step",
        },
        {"scheduler": sched.StepLR(optimizer, step_size=2, gamma=0.5), "interval": "epoch"},
    ],
    "ReduceLROnPlateau on the monitored score": lambda optimizer: [
        {
            "scheduler": sched.ReduceLROnPlateau(optimizer, factor=0.5, patience=0),
            "monitor": "score",
        }
    ],
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_every_scheduler_stays_on_schedule_times_the_decay(tmp_path, schedule):
    undisturbed = Rates()
    plain = ScriptedModule(optimizer=head_only(), schedulers=SCHEDULES[schedule])
    trainer([undisturbed], tmp_path, max_epochs=6).fit(plain, *loaders())

    module = ScriptedModule(optimizer=head_only(), schedulers=SCHEDULES[schedule])
    callback = DynamicFineTuning("net.backbone", **OPTIONS)
    rates = Rates(callback)
    run = trainer([callback, rates], tmp_path, max_epochs=6)
    run.fit(module, *loaders())
    assert len(callback.tuner.lr_schedulers) == len(run.lr_scheduler_configs)
    assert len(rates.rates[-1]) == 3  # two groups added by the unfreezes, on the schedule too
    assert sorted(set(rates.scales)) == pytest.approx([0.81, 0.9, 1.0])
    for step, (groups, scale) in enumerate(zip(rates.rates, rates.scales, strict=True)):
        expected = undisturbed.rates[step][0] * scale
        assert groups == pytest.approx([expected] * len(groups), rel=1e-12), step


class TwoOptimizers(ScriptedModule):
    """Manual optimization: an auxiliary head with its own optimizer (index 0), the net's
    (index 1), each with a StepLR stepped per epoch."""

    def __init__(self) -> None:
        super().__init__(steps_per_validation=4)  # the global step counts both optimizers
        self.aux = nn.Linear(3, 3)
        self.automatic_optimization = False

    def training_step(self, batch, batch_index):
        images, labels = batch
        optimizers = self.optimizers()
        loss = nn.functional.cross_entropy(self.net(images), labels)
        loss = loss + nn.functional.cross_entropy(self.aux(images.mean(dim=(2, 3))), labels)
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()

    def on_train_epoch_end(self):
        for scheduler in self.lr_schedulers():
            scheduler.step()

    def configure_optimizers(self):
        aux = torch.optim.SGD(self.aux.parameters(), lr=0.1)
        net = torch.optim.SGD(self.net.head.parameters(), lr=0.05)
        return [aux, net], [sched.StepLR(aux, 1, gamma=0.5), sched.StepLR(net, 1, gamma=0.5)]


def test_optimizer_index_manages_that_optimizer_and_only_its_schedulers(tmp_path):
    module = TwoOptimizers()
    callback = DynamicFineTuning("net.backbone", **OPTIONS, optimizer_index=1)
    run = trainer([callback], tmp_path, max_epochs=5)
    run.fit(module, *loaders())
    aux, net = run.optimizers
    net_scheduler = run.lr_scheduler_configs[1].scheduler
    assert callback.tuner.optimizer is net and callback.tuner.lr_schedulers == (net_scheduler,)
    assert [g["lr"] for g in net.param_groups] == pytest.approx([0.05 * 0.5**5 * 0.81] * 3)
    assert [g["lr"] for g in aux.param_groups] == pytest.approx([0.1 * 0.5**5])
    assert len(aux.param_groups) == 1


def group_of(optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def decay_of_the_deepest_conv(name, parameter):
    return {"weight_decay": 0.3} if name.endswith("backbone.3.0.weight") else None


def test_unfrozen_lr_ratio_and_param_group_fn(tmp_path):
    module = ScriptedModule(optimizer=lambda m: torch.optim.AdamW(m.net.head.parameters(), lr=0.01))
    callback = DynamicFineTuning(
        "net.backbone", **OPTIONS, unfrozen_lr_ratio=0.1, param_group_fn=decay_of_the_deepest_conv
    )
    run = trainer([callback], tmp_path, max_epochs=5)
    run.fit(module, *loaders())
    optimizer = run.optimizers[0]
    # the head; each unfreeze at 0.1 x the head's rate (two settings: two groups), every decay
    rates = [g["lr"] for g in optimizer.param_groups]
    assert rates == pytest.approx([0.0081, 0.00081, 0.00081, 0.00081])
    groups = group_of(optimizer)
    backbone = module.net.backbone
    assert groups[id(backbone[3][0].weight)]["weight_decay"] == 0.3
    assert groups[id(backbone[2][0].weight)]["weight_decay"] == 0.01  # AdamW's default
    assert groups[id(backbone[0][0].weight)] is optimizer.param_groups[3]


def test_unfrozen_parameters_follow_the_weight_decay_split(tmp_path):
    def split(module):
        head = module.net.head
        return torch.optim.AdamW(
            [
                {"params": [head.weight], "weight_decay": 0.05},
                {"params": [head.bias], "weight_decay": 0.0},
            ],
            lr=0.01,
        )

    module = ScriptedModule(optimizer=split, conv_bias=True)
    run, _ = fit(module, tmp_path, max_epochs=5)
    groups = group_of(run.optimizers[0])
    for block in module.net.backbone:
        conv, norm = block[0], block[1]
        assert groups[id(conv.weight)]["weight_decay"] == 0.05
        assert groups[id(conv.bias)]["weight_decay"] == 0.0
        assert id(norm.weight) not in groups and not norm.weight.requires_grad  # BN frozen


@pytest.mark.parametrize("train_batchnorm", [False, True])
def test_train_batchnorm_lets_the_unfrozen_groups_batchnorm_train(tmp_path, train_batchnorm):
    module = ScriptedModule()
    initial = {n: b.clone() for n, b in module.named_buffers()}
    weights = {n: p.detach().clone() for n, p in module.named_parameters()}
    fit(
        module, tmp_path, options={"train_batchnorm": train_batchnorm}, max_epochs=3
    )  # unfreeze 2-3
    for block in range(4):
        unfrozen = train_batchnorm and block >= 2
        prefix = f"net.backbone.{block}.1."
        stats = torch.equal(
            module.get_buffer(prefix + "running_mean"), initial[prefix + "running_mean"]
        )
        scale = torch.equal(module.get_parameter(prefix + "weight"), weights[prefix + "weight"])
        assert stats != unfrozen and scale != unfrozen, block
        assert module.get_submodule(f"net.backbone.{block}.1").training == (
            block >= 2 and train_batchnorm
        )

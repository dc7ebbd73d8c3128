"""Interplay rows for Lightning: its computer-vision fine-tuning example rewritten with dynft,
and dynft together with EarlyStopping and ModelCheckpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
torchvision = pytest.importorskip("torchvision")
from dynft_torch.lightning import DynamicFineTuning  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402
from lightning_models import ScriptedModule, WeightsAtValidation, fit, trainer  # noqa: E402
from tiny_models import assert_states_equal, state_copy  # noqa: E402


class TransferLearningModel(pl.LightningModule):
    """Lightning's ``computer_vision_fine_tuning.py`` example, tiny: a ResNet feature
    extractor (ImageNet weights in the example, random here: no downloads), a small ``fc``
    head on one logit with BCE, and Adam over the *trainable* parameters with MultiStepLR.
    dynft replaces the example's ``MilestonesFinetuning`` callback."""

    def __init__(self, lr: float = 1e-3, milestones: tuple[int, int] = (2, 4)) -> None:
        super().__init__()
        torch.manual_seed(0)
        backbone = torchvision.models.resnet18(weights=None)
        self.feature_extractor = nn.Sequential(*list(backbone.children())[:-1])
        self.fc = nn.Sequential(nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 1))
        self.loss = nn.BCEWithLogitsLoss()
        self.lr, self.milestones = lr, milestones

    def forward(self, images):
        return self.fc(self.feature_extractor(images).flatten(1)).squeeze(1)

    def training_step(self, batch, batch_index):
        images, labels = batch
        return self.loss(self(images), labels)

    def validation_step(self, batch, batch_index):
        images, labels = batch
        logits = self(images)
        self.log("val_loss", self.loss(logits, labels))
        self.log("val_acc", ((logits > 0).float() == labels).float().mean())

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=self.lr)
        return [optimizer], [MultiStepLR(optimizer, milestones=self.milestones, gamma=0.5)]


def cats_and_dogs(seed: int) -> DataLoader:
    """Images whose label is whether the red channel is brighter than the blue one."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(32, 3, 32, 32, generator=generator)
    labels = (images[:, 0].mean(dim=(1, 2)) > images[:, 2].mean(dim=(1, 2))).float()
    return DataLoader(TensorDataset(images, labels), batch_size=16)


class Logged(pl.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer, pl_module):
        self.values.append(float(trainer.callback_metrics["val_loss"]))


def test_lightnings_fine_tuning_example_with_dynft(tmp_path):
    module = TransferLearningModel()
    head = {id(p) for p in module.fc.parameters()}
    initial = state_copy(module)
    callback = DynamicFineTuning("feature_extractor", monitor="val_loss", patience=1, step=2)
    logged, probe = Logged(), WeightsAtValidation()
    run = trainer([callback, logged, probe], tmp_path, max_epochs=6)
    run.fit(module, cats_and_dogs(0), cats_and_dogs(1))

    tuner, optimizer = callback.tuner, run.optimizers[0]
    assert [g.name for g in tuner.groups] == [
        "feature_extractor.0+feature_extractor.1",
        *(f"feature_extractor.{i}" for i in range(4, 8)),
    ]  # conv1 with bn1 (a group of BatchNorm alone merges), layer1 .. layer4
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == head  # the filter saw the head
    unfreezes = [d for d in callback.decisions if d.newly_unfrozen]
    assert unfreezes, "the run never unfroze a group"
    assert len(optimizer.param_groups) == 1 + len(unfreezes)
    # best validation state at the end, and its value is the lowest logged one
    assert tuner.scheduler.best == pytest.approx(min(logged.values))
    assert_states_equal(state_copy(module), tuner.snapshot.tensors, None)
    # MultiStepLR stayed on schedule: two milestones passed, times the decay
    expected = 1e-3 * 0.5**2 * tuner.scheduler.lr_scale
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [expected] * len(unfreezes + [0])
    )
    # frozen BatchNorm: the running statistics never moved
    for name, buffer in module.named_buffers():
        assert torch.equal(buffer, initial[name]), name
    # between two validations exactly the unfrozen groups train
    pairs = zip(probe.states, probe.states[1:], callback.decisions, strict=False)  # to the last
    for before, after, decision in pairs:
        trained = [
            g.index
            for g in tuner.groups
            if any(not torch.equal(before[n], after[n]) for n in g.parameter_names)
        ]
        assert trained == list(decision.trainable_groups), decision.reason


def test_early_stopping_and_model_checkpoint_with_dynft(tmp_path):
    # dynft (patience 2) unfreezes after validation 7 and rolls back to 5; EarlyStopping
    # (patience 3) ends the fit after validation 8
    trace = (1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89)
    module = ScriptedModule(trace=trace)
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", monitor="score", save_top_k=1)
    stopping = EarlyStopping("score", patience=3)
    run, callback = fit(
        module, tmp_path, [stopping, checkpoint], options={"patience": 2}, max_epochs=10
    )
    assert run.current_epoch == 8 and stopping.stopped_epoch == 7
    assert [d.newly_unfrozen for d in callback.decisions if d.newly_unfrozen] == [(2, 3)]
    assert callback.decisions[-1].external_stop and callback.tuner.scheduler.best_epoch == 5
    # ModelCheckpoint's best file holds validation 5's weights: the model dynft ended on
    assert checkpoint.best_model_path.endswith("epoch=4-step=10.ckpt")
    best = torch.load(checkpoint.best_model_path, weights_only=True)
    assert_states_equal(best["state_dict"], state_copy(module))

"""The Lightning callback on a LightningModule that wraps a Hugging Face model."""

from __future__ import annotations

import pytest
import torch
from tiny_transformers import build, logits, make_batch, vit_blocks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
from dynft_torch.lightning import DynamicFineTuning  # noqa: E402

TRACE = (1.0, 1.1, 0.9)  # patience 1, step 1: unfreeze after epoch 2, improve at 3


class WrappedViT(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = build("vit")

    def training_step(self, batch, batch_index):
        images, labels = batch
        return nn.functional.cross_entropy(logits(self.model, images), labels)

    def validation_step(self, batch, batch_index):
        self.log("score", TRACE[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def fit(module, callback, epochs):
    images, labels = make_batch("vit", seed=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    data = DataLoader(TensorDataset(images, labels), batch_size=8)
    trainer.fit(module, data, DataLoader(TensorDataset(images[:4], labels[:4]), batch_size=4))


def test_backbone_names_the_wrapped_model_and_its_deepest_blocks_train_first():
    module = WrappedViT()
    with pytest.raises(ValueError, match="pass backbone='model'"):
        fit(module, DynamicFineTuning(monitor="score", patience=1, step=1), 1)

    module = WrappedViT()
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    callback = DynamicFineTuning(monitor="score", backbone="model", patience=1, step=1)
    fit(module, callback, 3)
    groups = callback.tuner.groups
    assert [g.name for g in groups] == [
        "model.vit.embeddings",
        f"model.vit.{vit_blocks()}.0",
        f"model.vit.{vit_blocks()}.1+model.vit.layernorm",
    ]
    assert [d.newly_unfrozen for d in callback.decisions] == [(), (2,), ()]
    parameters = dict(module.named_parameters())
    changed = [
        g.index
        for g in groups
        if any(not torch.equal(parameters[n], initial[n]) for n in g.parameter_names)
    ]
    assert changed == [2]  # only the deepest block trained, in the third epoch
    assert not torch.equal(
        parameters["model.classifier.weight"], initial["model.classifier.weight"]
    )

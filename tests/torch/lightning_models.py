"""Tiny LightningModules, data and Trainer settings shared by the Lightning tests.

The module trains TinyNet for real; its validation logs a scripted score, one value per
validation (picked by the global step, so a resumed fit logs the same values), which makes
every decision known in advance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from dynft_torch.lightning import DynamicFineTuning
from tiny_models import TinyNet, make_data
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# patience 1, step 2 over 4 groups: unfreeze after validations 2 and 4, stop at 6
TRACE = (1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.7, 0.75, 0.72, 0.71)
BATCHES = 2  # training batches per epoch
OPTIONS = {"monitor": "score", "mode": "min", "patience": 1, "step": 2}


class ScriptedModule(pl.LightningModule):
    """TinyNet (backbone ``net.backbone``, head ``net.head``) with a scripted validation score.

    Args:
        optimizer: ``parameters -> optimizer``; SGD with momentum on every parameter by default.
        schedulers: ``optimizer -> list of lr_scheduler configs`` returned with it.
        trace: The score of validation ``i`` is ``trace[i]``.
        steps_per_validation: Training batches between two validations.
        log_key: The name the score is logged under.
        seed: Seeds the initial weights.
        conv_bias: Give TinyNet's convolutions a bias.
    """

    def __init__(
        self,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        schedulers: Callable[[torch.optim.Optimizer], list[dict]] | None = None,
        trace: Sequence[float] = TRACE,
        steps_per_validation: int = BATCHES,
        log_key: str = "score",
        seed: int = 0,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = TinyNet(conv_bias=conv_bias)
        self.make_optimizer = optimizer
        self.make_schedulers = schedulers
        self.trace = trace
        self.steps_per_validation = steps_per_validation
        self.log_key = log_key

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_index):
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_index):
        index = self.trainer.global_step // self.steps_per_validation - 1
        self.log(self.log_key, float(self.trace[index]))

    def configure_optimizers(self):
        if self.make_optimizer is None:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        else:
            optimizer = self.make_optimizer(self)
        schedulers = [] if self.make_schedulers is None else self.make_schedulers(optimizer)
        return ([optimizer], schedulers) if schedulers else optimizer


def loaders(batches: int = BATCHES, batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    """Fixed training batches (no shuffling: resumed fits see the same data) and a val batch."""
    images, labels = make_data(n=batches * batch_size, seed=3)
    train = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
    val = DataLoader(TensorDataset(images[:4], labels[:4]), batch_size=4)
    return train, val


def trainer(callbacks: list[pl.Callback], root, **settings: Any) -> pl.Trainer:
    """A quiet CPU Trainer; ``settings`` override the defaults (``max_epochs=8``)."""
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 8,
        "logger": False,
        "enable_checkpointing": any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root),
        "callbacks": callbacks,
    }
    options.update(settings)
    return pl.Trainer(**options)


def fit(
    module: pl.LightningModule,
    root,
    callbacks: Sequence[pl.Callback] = (),
    *,
    options: dict | None = None,
    ckpt_path=None,
    data: tuple[DataLoader, DataLoader] | None = None,
    **settings: Any,
) -> tuple[pl.Trainer, DynamicFineTuning]:
    """Fit ``module`` with a DynamicFineTuning(backbone="net.backbone", **OPTIONS | options)."""
    callback = DynamicFineTuning("net.backbone", **{**OPTIONS, **(options or {})})
    run = trainer([callback, *callbacks], root, **settings)
    run.fit(module, *(data or loaders()), ckpt_path=ckpt_path)
    return run, callback


class WeightsAtValidation(pl.Callback):
    """Copies of the module's state after every validation (after dynft's decision)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

"""The checkpointing training loop shared by the checkpoint tests and the killed worker."""

from __future__ import annotations

from pathlib import Path

import torch
from dynft_torch import DynamicFineTuner, load_checkpoint, save_checkpoint
from tiny_models import TinyNet, make_data, train_epoch
from torch.optim import lr_scheduler as sched

# patience 2, step 1: unfreezes after epochs 4 and 7, improvements in between
VALUES = (1.0, 0.9, 0.95, 0.97, 0.85, 0.9, 0.92, 0.8, 0.85, 0.78)


def build(seed: int = 0, width: int = 8, head_only: bool = True):
    """Model, SGD (head-only by default), LambdaLR and tuner, all deterministic."""
    torch.manual_seed(seed)
    model = TinyNet(width=width)
    parameters = model.head.parameters() if head_only else model.parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9)
    scheduler = sched.LambdaLR(optimizer, lambda epoch: 0.95**epoch)
    tuner = DynamicFineTuner(
        model, optimizer, model.backbone, patience=2, step=1, lr_scheduler=scheduler
    )
    return model, optimizer, scheduler, tuner


def train(objects, first: int, last: int, path: Path | None = None, on_saved=None, extra=None):
    """Epochs ``first``..``last - 1`` (data and seeds fixed per epoch), saving after each."""
    model, optimizer, scheduler, tuner = objects
    for epoch in range(first, last):
        torch.manual_seed(100 + epoch)
        train_epoch(model, optimizer, make_data(seed=epoch))
        scheduler.step()
        tuner.step(VALUES[epoch])
        if path is not None:
            save_checkpoint(
                path,
                model=model,
                optimizer=optimizer,
                tuner=tuner,
                lr_scheduler=scheduler,
                extra=extra,
            )
            if on_saved is not None:
                on_saved(epoch)


def resume(path: Path, **build_options):
    """Fresh objects (another seed) loaded from ``path``: ``(objects, load_checkpoint's info)``."""
    objects = build(seed=1, **build_options)
    model, optimizer, scheduler, tuner = objects
    info = load_checkpoint(
        path, model=model, optimizer=optimizer, tuner=tuner, lr_scheduler=scheduler
    )
    return objects, info

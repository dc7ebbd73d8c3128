"""One study run on PyTorch: traditional top-n fine-tuning or dynamic fine-tuning.

Both strategies share the loop below: the same Adam optimizer, learning rate,
batches (sampled and weighted by the ``--balance`` mode, minority-augmented) and
epoch budget. Traditional unfreezes the top-n layers from the start and stops
early on the validation loss with the best weights restored; dynamic hands
every decision to ``dynft_torch.DynamicFineTuner``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmarks.study.config import StudyConfig
from benchmarks.study.data.batches import SplitArrays, TrainingData
from benchmarks.study.models.torch_backbones import (
    TorchClassifier,
    build_classifier,
    get_backbone,
    layer_groups,
    trainable_parameters,
)
from benchmarks.study.results.metrics import classification_metrics
from benchmarks.study.runners.records import (
    RunContext,
    median_load_seconds,
    run_record,
    timeline_entry,
    unfreeze_events,
)
from dynft_core import PlateauMonitor

FRAMEWORK = "torch"
Preprocess = Callable[[torch.Tensor], torch.Tensor]


def configure(cfg: StudyConfig) -> None:
    """Process-wide framework settings, applied once before the first run."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tensor(images: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)


def train_epoch(
    model: TorchClassifier,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    preprocess: Preprocess,
    dev: torch.device,
) -> float:
    """One epoch over the sampled batches; returns the mean weighted training loss."""
    model.train()
    total, count = 0.0, 0
    for indices in data.epoch_plan():
        images, labels, sample_weights = data.train_batch(indices)
        target = torch.from_numpy(labels).to(dev)
        weights = torch.from_numpy(sample_weights).to(dev)
        logits = model(preprocess(_tensor(images, dev)))
        # per-sample Eq. 14 weights averaged over the batch, as Keras does with sample_weight
        loss = (F.cross_entropy(logits, target, reduction="none") * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)
        count += len(labels)
    return total / count


@torch.no_grad()
def evaluate(
    model: TorchClassifier,
    data: TrainingData,
    split: SplitArrays,
    preprocess: Preprocess,
    dev: torch.device,
) -> tuple[float, np.ndarray]:
    """Unweighted mean cross-entropy and predicted labels on ``split``."""
    model.eval()
    total, predictions = 0.0, []
    for images, labels in data.eval_batches(split):
        logits = model(preprocess(_tensor(images, dev)))
        target = torch.from_numpy(labels).to(dev)
        total += float(F.cross_entropy(logits, target, reduction="sum"))
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    return total / len(split.labels), np.concatenate(predictions)


def _unfreeze_top(model: TorchClassifier, layers: list[list[torch.nn.Module]], top_n: int) -> None:
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    for group in layers[len(layers) - top_n :]:
        for parameter in trainable_parameters(group):
            parameter.requires_grad_(True)


def _train_traditional(
    model: TorchClassifier,
    cfg: StudyConfig,
    data: TrainingData,
    preprocess: Preprocess,
    dev: torch.device,
    layers: list[list[torch.nn.Module]],
    top_n: int,
    bar: tqdm,
) -> tuple[list[dict[str, Any]], int | None]:
    _unfreeze_top(model, layers, top_n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    monitor = PlateauMonitor(mode="min")
    best_state: dict[str, torch.Tensor] | None = None
    timeline: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        train_loss = train_epoch(model, optimizer, data, preprocess, dev)
        val_loss, _ = evaluate(model, data, data.val, preprocess, dev)
        timeline.append(timeline_entry(epoch, train_loss, val_loss, cfg.lr, top_n))
        bar.set_postfix(val_loss=f"{val_loss:.4f}", top_n=top_n)
        bar.update()
        if monitor.update(val_loss, epoch):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if monitor.wait >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return timeline, monitor.best_epoch


def _train_dynamic(
    model: TorchClassifier,
    cfg: StudyConfig,
    data: TrainingData,
    preprocess: Preprocess,
    dev: torch.device,
    layers: list[list[torch.nn.Module]],
    bar: tqdm,
) -> tuple[list[dict[str, Any]], int | None, list[dict[str, Any]]]:
    from dynft_torch import DynamicFineTuner

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tuner = DynamicFineTuner(
        model,
        optimizer,
        backbone=model.backbone,
        groups=layers,
        patience=cfg.patience,
        step=cfg.step,
        decay=cfg.decay,
        max_epochs=cfg.epochs,
    )
    scheduler = tuner.scheduler
    timeline: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        lr, num_unfrozen = optimizer.param_groups[0]["lr"], scheduler.num_unfrozen
        train_loss = train_epoch(model, optimizer, data, preprocess, dev)
        val_loss, _ = evaluate(model, data, data.val, preprocess, dev)
        timeline.append(timeline_entry(epoch, train_loss, val_loss, lr, num_unfrozen))
        decision = tuner.step(val_loss)
        unfrozen = f"{decision.num_unfrozen}/{len(layers)}"
        bar.set_postfix(val_loss=f"{val_loss:.4f}", unfrozen=unfrozen)
        bar.update()
        if decision.stop:
            break
    return timeline, scheduler.best_epoch, unfreeze_events(scheduler.history, cfg.lr)


def run(cfg: StudyConfig, ctx: RunContext, data: TrainingData) -> dict[str, Any]:
    """Train, evaluate on the test split, save and time-load one model.

    Args:
        cfg: Study configuration (optimizer, budget, patience, dynamic settings).
        ctx: Which backbone/strategy/seed and where to save.
        data: The seed's split, resized to ``ctx.image_size``.

    Returns:
        The run dict of the shared contract.

    Raises:
        StudyConfigError: The traditional top-n exceeds the backbone's layer count.
    """
    dev = device()
    torch.manual_seed(ctx.seed)
    spec = get_backbone(ctx.backbone)
    num_classes = len(ctx.class_names)
    start = time.perf_counter()
    model, weights_used = build_classifier(ctx.backbone, cfg.weights, num_classes, ctx.image_size)
    model.to(dev)
    layers = layer_groups(model.backbone)
    with tqdm(total=cfg.epochs, desc=ctx.label, unit="epoch", leave=False) as bar:
        if ctx.strategy == "traditional":
            top_n = cfg.top_n_for(ctx.backbone, spec.top_n, len(layers), "weight layers of")
            timeline, best_epoch = _train_traditional(
                model, cfg, data, spec.preprocess, dev, layers, top_n, bar
            )
            events: list[dict[str, Any]] = []
            num_groups = None
        else:
            timeline, best_epoch, events = _train_dynamic(
                model, cfg, data, spec.preprocess, dev, layers, bar
            )
            top_n, num_groups = None, len(layers)
    wall_s = time.perf_counter() - start

    _, predictions = evaluate(model, data, data.test, spec.preprocess, dev)
    metrics = classification_metrics(data.test.labels, predictions, ctx.class_names)
    path = ctx.model_path(FRAMEWORK, ".pt")
    torch.save(model.state_dict(), path)

    def load() -> TorchClassifier:
        # what a deployment does: build the architecture, then read the weights file
        restored, _ = build_classifier(ctx.backbone, "none", num_classes, ctx.image_size)
        restored.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return restored

    return run_record(
        ctx,
        framework=FRAMEWORK,
        weights=weights_used,
        metrics=metrics,
        timeline=timeline,
        best_epoch=best_epoch,
        wall_s=wall_s,
        model_path=path,
        load_s=median_load_seconds(load),
        top_n=top_n,
        num_groups=num_groups,
        unfreeze_events=events,
    )

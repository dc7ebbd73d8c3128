"""One study run on PyTorch: any of the five strategies, in one plain training loop.

Every strategy shares the loop below: the same Adam optimizer, learning rate, batches (sampled
and weighted by the ``--balance`` mode, minority-augmented) and epoch budget. The fixed-depth
strategies make their layers trainable once and stop with ``FixedDepthStop``; the staged ones
hand every decision to ``dynft_torch.DynamicFineTuner``. The backbone is held in ``eval()``, so
BatchNorm statistics never change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dynft_torch import BackboneGroup, backbone_batchnorms, resolve_groups
from dynft_torch.freezing import batchnorm_parameter_names
from tqdm.auto import tqdm

from benchmarks.study.config import StudyConfig, StudyConfigError
from benchmarks.study.data.batches import SplitArrays, TrainingData
from benchmarks.study.determinism import seed_everything
from benchmarks.study.models.torch_backbones import (
    TorchBackbone,
    TorchClassifier,
    build_classifier,
    get_backbone,
)
from benchmarks.study.results.metrics import classification_metrics
from benchmarks.study.runners.feature_cache_runs import CacheFigures
from benchmarks.study.runners.records import (
    Outcome,
    RunContext,
    median_load_seconds,
    run_record,
    timeline_entry,
    unfreeze_events,
    validation_summary,
)
from benchmarks.study.runners.strategies import (
    FIXED_DEPTH,
    FixedDepthStop,
    fixed_depth,
    staged_plan,
    unfrozen_lr_ratio,
)
from benchmarks.study.runners.torch_feature_cache import TorchStudyCache, fixed_depth_tuner

FRAMEWORK = "torch"
Preprocess = Callable[[torch.Tensor], torch.Tensor]
Layers = list[BackboneGroup]


def configure(cfg: StudyConfig) -> dict[str, Any]:
    """Process-wide settings for repeatable runs, applied once before the first run.

    Returns:
        What was applied, for the report's determinism section.
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    on_gpu = device().type == "cuda"
    if on_gpu:
        # cuBLAS is deterministic only with a fixed workspace, set before CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    # some CUDA kernels have no deterministic version: warn there rather than stop the study
    torch.use_deterministic_algorithms(True, warn_only=on_gpu)
    return {
        "library": f"torch {torch.__version__}",
        "device": str(device()),
        "deterministic_algorithms": "warn only" if on_gpu else True,
        "intra_op_threads": torch.get_num_threads(),
    }


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
    cache: TorchStudyCache | None = None,
) -> float:
    """One epoch over the sampled batches; returns the mean weighted training loss."""
    model.train()
    total, count = 0.0, 0
    if cache is not None:
        cache.begin_epoch()
    for indices in data.epoch_plan():
        images, labels, sample_weights = data.train_batch(indices)
        target = torch.from_numpy(labels).to(dev)
        weights = torch.from_numpy(sample_weights).to(dev)
        if cache is None:
            logits = model(preprocess(_tensor(images, dev)))
        else:
            logits = cache.training_logits(model, indices, labels, images)
        # per-sample weights averaged over the batch, as Keras does with sample_weight
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
    cache: TorchStudyCache | None = None,
) -> tuple[float, np.ndarray]:
    """The loss and predicted labels on ``split`` (the validation split served by ``cache`` when
    given): the monitored validation loss on the validation split
    (``TrainingData.validation_loss``), the unweighted mean cross-entropy on another."""
    model.eval()
    losses, predictions = [], []
    if cache is not None and split is data.val:
        batches = cache.validation_logits()
    else:
        batches = (
            (model(preprocess(_tensor(images, dev))), labels)
            for images, labels in data.eval_batches(split)
        )
    for logits, labels in batches:
        target = torch.from_numpy(labels).to(dev)
        losses.append(F.cross_entropy(logits, target, reduction="none").cpu().numpy())
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    per_sample = np.concatenate(losses)
    loss = data.validation_loss(per_sample) if split is data.val else float(per_sample.mean())
    return loss, np.concatenate(predictions)


def backbone_layers(model: TorchClassifier) -> Layers:
    """The backbone's "layers", input to output: the adapter's ``groups="layers"``.

    One group per module owning weights, BatchNorm excluded (each rides with the layer before
    it): the unit of the traditional top-n (the paper's Table 3 counting) and of the dynamic
    groups.

    Raises:
        StudyConfigError: Some backbone parameters are in no layer (a backbone child named like
            a head, which the adapter leaves out), so no strategy could ever train them.
    """
    layers = resolve_groups(model, model.backbone, "layers")
    grouped = {name for layer in layers for name in layer.parameter_names}
    missing = [name for name, _ in model.named_parameters() if name.startswith("backbone.")]
    missing = [name for name in missing if name not in grouped]
    if missing:
        raise StudyConfigError(
            f"{len(missing)} backbone parameters are in no layer (first: {missing[:3]}): the "
            "study's backbone must return features only; rename a child called like a head "
            "(fc, classifier, head, _fc ...) or move the head out of the feature extractor"
        )
    return layers


def _parameter_groups(layers: Layers) -> list[list[str]]:
    """The layers as parameter-name lists, the form the adapter's ``groups=`` takes."""
    return [list(layer.parameter_names) for layer in layers]


def _train_top(model: TorchClassifier, layers: Layers, depth: int) -> list[torch.nn.Parameter]:
    """Freeze the backbone but its top ``depth`` layers; the parameters that now train."""
    parameters = dict(model.named_parameters())
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    top = layers[len(layers) - depth :]
    frozen_norms = batchnorm_parameter_names(backbone_batchnorms(model, top))
    for layer in top:
        for name in layer.parameter_names:
            parameters[name].requires_grad_(name not in frozen_norms)
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _open_cache(
    cfg: StudyConfig, tuner: Any, data: TrainingData, spec: TorchBackbone, dev: torch.device
) -> TorchStudyCache | None:
    """The run's feature cache, ``None`` with ``--feature-cache off``, nothing ever frozen or a
    model that cannot be cut."""
    if cfg.feature_cache == "off" or tuner.scheduler.num_unfrozen == len(tuner.groups):
        return None
    return TorchStudyCache.open(
        tuner, data, lambda images: spec.preprocess(_tensor(images, dev)), cfg.feature_cache_max_gb
    )


def _train_fixed(
    model: TorchClassifier,
    cfg: StudyConfig,
    data: TrainingData,
    spec: TorchBackbone,
    layers: Layers,
    depth: int,
    bar: tqdm,
) -> Outcome:
    dev = next(model.parameters()).device
    optimizer = torch.optim.Adam(_train_top(model, layers, depth), lr=cfg.lr)
    stopper = FixedDepthStop(cfg.patience, cfg.epochs)
    best_state: dict[str, torch.Tensor] | None = None
    timeline: list[dict[str, Any]] = []
    stop = False
    cache = _open_cache(
        cfg,
        fixed_depth_tuner(model, model.backbone, _parameter_groups(layers), depth),
        data,
        spec,
        dev,
    )
    while not stop:
        train_loss = train_epoch(model, optimizer, data, spec.preprocess, dev, cache)
        val_loss, _ = evaluate(model, data, data.val, spec.preprocess, dev, cache)
        if cache is not None:
            cache.observe()
        timeline.append(timeline_entry(len(timeline) + 1, train_loss, val_loss, cfg.lr, depth))
        bar.set_postfix(val_loss=f"{val_loss:.4f}", layers=depth)
        bar.update()
        improved, stop = stopper.step(val_loss)
        if improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    figures = _closed(cache, cfg.feature_cache)
    if best_state is not None:
        model.load_state_dict(best_state)
    return Outcome(timeline, stopper.best_epoch, [], top_n=depth, feature_cache=figures)


def _train_staged(
    model: TorchClassifier,
    cfg: StudyConfig,
    data: TrainingData,
    spec: TorchBackbone,
    layers: Layers,
    strategy: str,
    bar: tqdm,
) -> Outcome:
    from dynft_torch import DynamicFineTuner

    dev = next(model.parameters()).device
    plan = staged_plan(strategy, cfg)
    groups = plan.groups(_parameter_groups(layers))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tuner = DynamicFineTuner(
        model, optimizer, backbone=model.backbone, groups=groups, **plan.options
    )
    scheduler = tuner.scheduler
    timeline: list[dict[str, Any]] = []
    cache = _open_cache(cfg, tuner, data, spec, dev)
    for epoch in range(1, cfg.epochs + 1):
        lr, num_unfrozen = optimizer.param_groups[0]["lr"], scheduler.num_unfrozen
        train_loss = train_epoch(model, optimizer, data, spec.preprocess, dev, cache)
        val_loss, _ = evaluate(model, data, data.val, spec.preprocess, dev, cache)
        if cache is not None:
            cache.observe()
        timeline.append(timeline_entry(epoch, train_loss, val_loss, lr, num_unfrozen))
        decision = tuner.step(val_loss)
        bar.set_postfix(
            val_loss=f"{val_loss:.4f}", unfrozen=f"{decision.num_unfrozen}/{len(groups)}"
        )
        bar.update()
        if decision.stop:
            break
    events = unfreeze_events(scheduler.history, cfg.lr)
    figures = _closed(cache, cfg.feature_cache)
    return Outcome(
        timeline, scheduler.best_epoch, events, num_groups=len(groups), feature_cache=figures
    )


def _closed(cache: TorchStudyCache | None, mode: str) -> dict[str, Any]:
    """Close the run's cache; the run-record fields of its figures."""
    if cache is None:
        return CacheFigures(mode).record()
    cache.close()
    return cache.figures.record()


def train(cfg: StudyConfig, ctx: RunContext, data: TrainingData) -> tuple[Any, Outcome, str, float]:
    """Build and train one model; returns it (on the best weights), the outcome, the weights it
    started from and the training wall time.

    Raises:
        StudyConfigError: The traditional top-n exceeds the backbone's layer count.
    """
    seed_everything(ctx.seed)
    torch.manual_seed(ctx.seed)
    spec = get_backbone(ctx.backbone)
    start = time.perf_counter()
    model, weights_used = build_classifier(
        ctx.backbone, cfg.weights, len(ctx.class_names), ctx.image_size
    )
    model.to(device())
    layers = backbone_layers(model)
    with tqdm(total=cfg.epochs, desc=ctx.label, unit="epoch", leave=False) as bar:
        if ctx.strategy in FIXED_DEPTH:
            top_n = cfg.top_n_for(ctx.backbone, spec.top_n, len(layers), "weight layers of")
            depth = fixed_depth(ctx.strategy, top_n, len(layers))
            outcome = _train_fixed(model, cfg, data, spec, layers, depth, bar)
        else:
            outcome = _train_staged(model, cfg, data, spec, layers, ctx.strategy, bar)
    return model, outcome, weights_used, time.perf_counter() - start


def validation_scores(model: Any, ctx: RunContext, data: TrainingData) -> dict[str, float]:
    """Validation loss and balanced accuracy of the trained model (what a sweep selects on)."""
    preprocess = get_backbone(ctx.backbone).preprocess
    loss, predictions = evaluate(model, data, data.val, preprocess, device())
    return validation_summary(loss, data.val.labels, predictions, ctx.class_names)


def run(cfg: StudyConfig, ctx: RunContext, data: TrainingData) -> dict[str, Any]:
    """Train, score on the validation and test splits, save and time-load one model.

    Returns:
        The run dict of ``benchmarks.study.runners.records.run_record``.
    """
    model, outcome, weights_used, wall_s = train(cfg, ctx, data)
    spec = get_backbone(ctx.backbone)
    _, predictions = evaluate(model, data, data.test, spec.preprocess, device())
    test = classification_metrics(data.test.labels, predictions, ctx.class_names)
    path = ctx.model_path(FRAMEWORK, ".pt")
    torch.save(model.state_dict(), path)
    num_classes = len(ctx.class_names)

    def load() -> TorchClassifier:
        # what a deployment does: build the architecture, then read the weights file
        restored, _ = build_classifier(ctx.backbone, "none", num_classes, ctx.image_size)
        restored.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return restored

    return run_record(
        ctx,
        framework=FRAMEWORK,
        weights=weights_used,
        lr=cfg.lr,
        lr_ratio=unfrozen_lr_ratio(ctx.strategy, cfg),
        outcome=outcome,
        test=test,
        val=validation_scores(model, ctx, data),
        wall_s=wall_s,
        model_path=path,
        load_s=median_load_seconds(load),
    )

"""Overhead of ``dynft_torch.DynamicFineTuner`` on MobileNetV2 (96 px, CPU).

Measured side by side in one run, epochs interleaved, medians reported:

1. epoch time with the tuner (no decision event) / the same epoch in a plain loop that freezes
   the backbone by hand (goal <= 1.01);
2. snapshot bytes / trainable bytes, head-only and after an unfreeze (goal <= 1.05);
3. head-only epoch / full fine-tuning epoch (goal <= 0.5).

Usage: ``python -m benchmarks.perf.torch_overhead [--batches 6] [--batch-size 16] [--repeats 15]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from dynft_torch import DynamicFineTuner, resolve_groups
from torch import nn

IMAGE_SIZE = 96
NUM_CLASSES = 7


def build_model() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)
    model.classifier[-1] = nn.Linear(model.last_channel, NUM_CLASSES)
    return model


def make_batches(count: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator),
        )
        for _ in range(count)
    ]


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches, frozen: nn.Module | None = None
) -> None:
    """One epoch; ``frozen``, a backbone frozen by hand, goes back to eval mode (BatchNorm)."""
    model.train()
    if frozen is not None:
        frozen.eval()
    for images, labels in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def plain_setup() -> Callable[[list], None]:
    """Backbone frozen by hand (no tuner): BatchNorm put back in eval mode every epoch."""
    model = build_model()
    for parameter in model.features.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return lambda batches: train_epoch(model, optimizer, batches, frozen=model.features)


def head_only_setup() -> tuple[Callable[[list], None], DynamicFineTuner]:
    """Tuner with every group frozen; each epoch ends with a step that triggers nothing."""
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tuner = DynamicFineTuner(
        model, optimizer, backbone=model.features, patience=10**6, max_epochs=10**6
    )
    tuner.step(1.0)

    def epoch(batches: list) -> None:
        train_epoch(model, optimizer, batches)
        tuner.step(2.0)  # worse than the best: no snapshot, no unfreeze, no rollback

    return epoch, tuner


def unfrozen_setup(groups: int | None) -> tuple[Callable[[list], None], DynamicFineTuner]:
    """Tuner after one unfreeze of ``groups`` groups (``None``: all of them)."""
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = groups or len(resolve_groups(model, model.features))
    tuner = DynamicFineTuner(model, optimizer, backbone=model.features, patience=1, step=step)
    tuner.step(1.0)
    tuner.step(2.0)
    return (lambda batches: train_epoch(model, optimizer, batches)), tuner


def trainable_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def time_interleaved(epochs: dict[str, Callable[[list], None]], batches, repeats: int):
    for epoch in epochs.values():  # warm-up: allocator, autograd graph caches
        epoch(batches[:1])
    timings: dict[str, list[float]] = {name: [] for name in epochs}
    names = list(epochs)
    for repeat in range(repeats):
        # rotate the order so no setup always runs right after the same neighbour
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.perf_counter()
            epochs[name](batches)
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6, help="batches per epoch (default 6)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
    parser.add_argument("--repeats", type=int, default=15, help="timed epochs per setup (15)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = make_batches(args.batches, args.batch_size)

    plain = plain_setup()
    head_only, head_tuner = head_only_setup()
    everything, _ = unfrozen_setup(None)
    _, partial_tuner = unfrozen_setup(3)
    medians = time_interleaved(
        {"plain": plain, "tuner": head_only, "full": everything}, batches, args.repeats
    )

    head_tuner.step(0.0)  # an improvement: takes a snapshot
    partial_tuner.step(0.0)
    head_ratio = head_tuner.snapshot.nbytes / trainable_bytes(head_tuner.model)
    partial_ratio = partial_tuner.snapshot.nbytes / trainable_bytes(partial_tuner.model)

    print(
        f"# dynft_torch overhead, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), MobileNetV2 {IMAGE_SIZE}px, "
        f"{args.batches}x{args.batch_size} images/epoch, median of {args.repeats}"
    )
    print(f"plain epoch (backbone frozen by hand)  {medians['plain']:.3f} s")
    print(f"tuner epoch, head only, no event       {medians['tuner']:.3f} s")
    print(f"tuner epoch, all groups unfrozen       {medians['full']:.3f} s")
    overhead = medians["tuner"] / medians["plain"]
    print(f"tuner / plain                          {overhead:.3f}  (goal <= 1.01)")
    head_share = medians["tuner"] / medians["full"]
    print(f"head-only / full epoch                 {head_share:.3f}  (goal <= 0.5)")
    print(
        f"snapshot / trainable bytes, head only  {head_ratio:.3f}  "
        f"({head_tuner.snapshot.nbytes} / {trainable_bytes(head_tuner.model)})  (goal <= 1.05)"
    )
    print(
        f"snapshot / trainable bytes, 3 groups   {partial_ratio:.3f}  "
        f"({partial_tuner.snapshot.nbytes} / {trainable_bytes(partial_tuner.model)})"
    )


if __name__ == "__main__":
    main()

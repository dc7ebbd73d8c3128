"""Overhead of ``dynft_torch.transformers.DynamicFineTuningCallback`` in a Hugging Face Trainer.

Two Trainers on the same random-init ViT (built from ``ViTConfig``, no download), CPU, one
process: "plain" freezes the backbone by hand (Trainer's optimizer holds the head only);
"dynft" adds the callback, which freezes it itself and monitors ``eval_loss`` with a patience
that never runs out, so both train the same head and the difference is the callback's own cost
(its events, a snapshot at every improvement, a decision per epoch). An epoch is timed from one
``on_epoch_begin`` to the next (the last one to ``on_train_end``): training, evaluation and
decision. Runs of both setups alternate in rotating order; the first epoch of every run is
dropped (warm-up); medians over all timed epochs (goal: ratio <= 1.01).

Usage: ``python -m benchmarks.perf.transformers_overhead [--repeats 6] [--epochs 4]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time

import torch
import transformers
from dynft_torch.transformers import DynamicFineTuningCallback
from torch.utils.data import Dataset

IMAGE_SIZE = 32
NUM_LABELS = 10


class Images(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        self.labels = torch.randint(0, NUM_LABELS, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def build_model() -> transformers.ViTForImageClassification:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=NUM_LABELS,
    )
    return transformers.ViTForImageClassification(config)


class EpochClock(transformers.TrainerCallback):
    """Seconds per epoch, from one epoch's start to the next's (the last: to the end)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()

    def epochs(self) -> list[float]:
        marks = [*self.starts, self.end]
        return [later - earlier for earlier, later in zip(marks, marks[1:], strict=False)]


def timed_run(with_callback: bool, args: argparse.Namespace, data: tuple[Dataset, Dataset]):
    """Train one run of ``args.epochs`` epochs; its epoch times without the first."""
    model = build_model()
    clock = EpochClock()
    callbacks: list[transformers.TrainerCallback] = [clock]
    if with_callback:
        callbacks.append(DynamicFineTuningCallback(patience=10**6))
    else:
        for parameter in model.vit.parameters():
            parameter.requires_grad_(False)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = transformers.Trainer(
            model=model,
            args=transformers.TrainingArguments(
                output_dir=output_dir,
                per_device_train_batch_size=args.batch_size,
                per_device_eval_batch_size=args.batch_size,
                num_train_epochs=args.epochs,
                eval_strategy="epoch",
                save_strategy="no",
                logging_strategy="no",
                report_to=[],
                use_cpu=True,
                disable_tqdm=True,
                dataloader_num_workers=0,
                learning_rate=1e-3,
                seed=0,
            ),
            train_dataset=data[0],
            eval_dataset=data[1],
            callbacks=callbacks,
        )
        trainer.remove_callback(transformers.PrinterCallback)  # disable_tqdm's log printer
        trainer.train()
    return clock.epochs()[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="runs per setup (6)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run, 1 dropped (4)")
    parser.add_argument("--batches", type=int, default=8, help="training batches per epoch (8)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    data = (Images(args.batches * args.batch_size, 1), Images(2 * args.batch_size, 2))

    timed_run(True, args, data)  # warm-up of both code paths
    timed_run(False, args, data)
    epochs: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(args.repeats):
        for with_callback in (True, False) if repeat % 2 else (False, True):
            epochs[with_callback] += timed_run(with_callback, args, data)
    plain, dynft = statistics.median(epochs[False]), statistics.median(epochs[True])

    print(
        "# DynamicFineTuningCallback overhead, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {args.threads} thread(s), ViT 4x64 "
        f"{IMAGE_SIZE}px, {args.batches}x{args.batch_size} images/epoch, "
        f"{len(epochs[False])} timed epochs per setup"
    )
    print(f"plain Trainer epoch (backbone frozen by hand)  {plain:.3f} s")
    print(f"Trainer epoch with the callback                 {dynft:.3f} s")
    print(f"callback / plain                                {dynft / plain:.3f}  (goal <= 1.01)")


if __name__ == "__main__":
    main()

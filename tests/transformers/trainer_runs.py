"""Tiny Trainer runs for the callback tests: generated datasets, a scripted metric, and a
recorder that keeps what the weights and learning rates were at every evaluation and step."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from dynft_torch.transformers import DynamicFineTuningCallback
from tiny_transformers import TEXT_FAMILIES, build, make_batch
from torch.utils.data import Dataset

STEPS_PER_EPOCH = 4  # 32 examples, batches of 8


class Examples(Dataset):
    """``n`` examples a tiny model can learn (``make_batch``), as Trainer's dict inputs."""

    def __init__(self, family: str, n: int, seed: int) -> None:
        self.inputs, self.labels = make_batch(family, n=n, seed=seed)
        self.key = "input_ids" if family in TEXT_FAMILIES else "pixel_values"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {self.key: self.inputs[index], "labels": self.labels[index]}


class ScriptedScore:
    """``compute_metrics`` reporting ``score`` (and any ``others``) from fixed sequences, one
    value per evaluation: the decisions are then known in advance whatever the weights do."""

    def __init__(self, values: Sequence[float], **others: Sequence[float]) -> None:
        self.series = {
            name: itertools.chain(series, itertools.repeat(series[-1]))
            for name, series in {"score": values, **others}.items()
        }

    def __call__(self, prediction: transformers.EvalPrediction) -> dict[str, float]:
        return {name: next(series) for name, series in self.series.items()}


class Recorder(transformers.TrainerCallback):
    """What the model and optimizer held at every evaluation and step.

    Put before the dynft callback it sees each evaluation's weights before the decision; put
    after it, the weights the decision left.
    """

    def __init__(self) -> None:
        self.evaluated: dict[int, dict[str, torch.Tensor]] = {}
        self.with_state: dict[int, set[str]] = {}  # parameters with optimizer state
        self.with_grad: dict[int, int] = {}  # parameters holding a gradient
        self.rates: list[tuple[int, list[float]]] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append((state.global_step, [group["lr"] for group in optimizer.param_groups]))

    def on_evaluate(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        self.evaluated[step] = weights(model)
        names = {id(p): n for n, p in model.named_parameters()}
        self.with_state[step] = {names[id(p)] for p, s in optimizer.state.items() if s}
        self.with_grad[step] = sum(p.grad is not None for p in model.parameters())


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def arguments(output_dir: Path, **overrides) -> transformers.TrainingArguments:
    """Small, deterministic CPU settings: 4 steps per epoch, an evaluation per epoch."""
    settings = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "num_train_epochs": 6,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "learning_rate": 1e-2,
        "weight_decay": 0.05,
        "warmup_steps": 2,
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


def make_trainer(
    family: str,
    output_dir: Path,
    scores: Sequence[float] | None = None,
    callback: DynamicFineTuningCallback | None = None,
    before: Sequence[transformers.TrainerCallback] = (),
    after: Sequence[transformers.TrainerCallback] = (),
    model: torch.nn.Module | None = None,
    eval_dataset: Dataset | dict[str, Dataset] | None = None,
    other_metrics: dict[str, Sequence[float]] | None = None,
    **overrides,
) -> tuple[transformers.Trainer, DynamicFineTuningCallback, Recorder]:
    """A Trainer on ``family``'s tiny model with a recorder, then ``before``, the dynft
    callback and ``after``.

    ``scores`` scripts the ``eval_score`` metric (monitored, lower is better) unless ``None``
    (then the evaluation loss is all there is); ``other_metrics`` scripts more.
    """
    recorder = Recorder()
    callback = callback or DynamicFineTuningCallback(patience=1, step=1, decay=0.5)
    if scores is not None:
        overrides.setdefault("metric_for_best_model", "score")
        overrides.setdefault("greater_is_better", False)
    trainer = transformers.Trainer(
        model=model if model is not None else build(family),
        args=arguments(output_dir, **overrides),
        train_dataset=Examples(family, 32, seed=1),
        eval_dataset=eval_dataset if eval_dataset is not None else Examples(family, 8, seed=2),
        compute_metrics=None if scores is None else ScriptedScore(scores, **(other_metrics or {})),
        callbacks=[recorder, *before, callback, *after],
    )
    return trainer, callback, recorder


def changed_groups(callback, reference: dict[str, torch.Tensor], current=None) -> list[int]:
    """Indices of the backbone groups holding a parameter that differs from ``reference``."""
    current = current if current is not None else weights(callback.tuner.model)
    return [
        group.index
        for group in callback.tuner.groups
        if any(not torch.equal(current[n], reference[n]) for n in group.parameter_names)
    ]


def same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

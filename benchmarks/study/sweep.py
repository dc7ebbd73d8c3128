"""Learning rates chosen fairly: a small sweep per strategy on the validation split (``--sweep``).

Every strategy gets the same treatment. Before the study's runs, each (backbone, strategy) is
trained once per candidate setting on the first seed's split, and the candidate whose final model
(its best-validation weights) has the lowest validation loss is used for every seed of that
strategy. Trials never see the test split: they are scored on validation only and save nothing.

A candidate is a combination of values of the swept settings (:data:`SWEEPABLE`). The base
learning rate applies to every strategy; the unfrozen-group rate ratio applies to the staged
strategies that take it (``two_stage`` and ``dynamic_tuned``; ``dynamic`` stays Algorithm 1 at
ratio 1) and is swept for those alone, so the others are not trained more often for nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from types import ModuleType
from typing import Any

from benchmarks.study.config import STRATEGIES, StudyConfig, StudyConfigError, positive_number
from benchmarks.study.runners.strategies import RATIO_STRATEGIES

# Swept setting -> the strategies it applies to. Each is a StudyConfig field the runners use.
SWEEPABLE: dict[str, tuple[str, ...]] = {
    "lr": STRATEGIES,
    "unfrozen_lr_ratio": RATIO_STRATEGIES,
}


def parse_sweep(items: list[str]) -> dict[str, tuple[float, ...]]:
    """``["lr=1e-4,3e-4"]`` -> ``{"lr": (1e-4, 3e-4)}``; values are distinct numbers > 0.

    Raises:
        StudyConfigError: An unknown setting, a repeated setting, or a bad value.
    """
    grid: dict[str, tuple[float, ...]] = {}
    for item in items:
        name, _, text = item.partition("=")
        name = name.strip()
        if name not in SWEEPABLE:
            raise StudyConfigError(
                f"--sweep {item!r}: {name!r} cannot be swept; sweepable: {sorted(SWEEPABLE)} "
                "(as name=v1,v2,...)"
            )
        if name in grid:
            raise StudyConfigError(f"--sweep {name} is given twice; give each setting once")
        values = []
        for part in (piece.strip() for piece in text.split(",")):
            value = positive_number(part)
            if value is None:
                raise StudyConfigError(
                    f"--sweep {item!r}: {part!r} is not a number > 0; give name=v1,v2,..."
                )
            values.append(value)
        if len(set(values)) != len(values):
            raise StudyConfigError(f"--sweep {item!r} repeats a value")
        grid[name] = tuple(values)
    return grid


def candidates(grid: dict[str, tuple[float, ...]], strategy: str) -> list[dict[str, float]]:
    """Every combination of the swept values that apply to ``strategy`` (``[{}]`` if none)."""
    names = [name for name in grid if strategy in SWEEPABLE[name]]
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*map(grid.get, names))
    ]


def trial(runner: ModuleType, cfg: StudyConfig, ctx: Any, data: Any) -> dict[str, Any]:
    """Train one candidate and score it on the validation split only."""
    model, outcome, _, wall_s = runner.train(cfg, ctx, data)
    scores = runner.validation_scores(model, ctx, data)
    return {
        "val_loss": scores["loss"],
        "val_balanced_accuracy": scores["balanced_accuracy"],
        "epochs": len(outcome.timeline),
        "best_epoch": outcome.best_epoch,
        "wall_s": wall_s,
    }


def choose(trials: list[dict[str, Any]]) -> dict[str, float]:
    """The candidate with the lowest validation loss (the first of equals, in grid order)."""
    finite = [t for t in trials if t["val_loss"] == t["val_loss"]]  # NaN never wins
    if not finite:
        raise StudyConfigError(
            "every candidate of the sweep diverged (validation loss NaN); lower the swept values"
        )
    return dict(min(finite, key=lambda t: t["val_loss"])["setting"])


def sweep_strategy(
    runner: ModuleType, cfg: StudyConfig, ctx: Any, data: Any, on_trial: Any
) -> dict[str, Any]:
    """Run the sweep of one (backbone, strategy) on ``ctx``'s seed; returns trials and choice.

    Args:
        runner: The framework's runner module (``train``, ``validation_scores``).
        cfg: The study's settings (the swept fields are replaced per candidate).
        ctx: The run context of the strategy on the sweep seed.
        data: That seed's training data (reseeded before every trial).
        on_trial: Called after each trial (progress).
    """
    trials = []
    for setting in candidates(cfg.sweep, ctx.strategy):
        data.reseed(ctx.seed)
        result = trial(runner, replace(cfg, **setting), ctx, data)
        trials.append({"setting": setting, **result})
        on_trial()
    return {
        "backbone": ctx.backbone,
        "strategy": ctx.strategy,
        "seed": ctx.seed,
        "trials": trials,
        "chosen": choose(trials),
    }

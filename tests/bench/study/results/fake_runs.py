"""Run dicts shaped like the runners' output (real metrics and baselines, no training)."""

from __future__ import annotations

import numpy as np

from benchmarks.study.results.baselines import sanity_flags, trivial_baselines
from benchmarks.study.results.metrics import classification_metrics

CLASS_NAMES = ["Pneumonia", "COVID-19", "Atelectasis"]


TRAIN_LABELS = np.array([0] * 30 + [1] * 8 + [2] * 2)


def fake_run(backbone: str, strategy: str, seed: int, rng, hit_rate: float = 0.75) -> dict:
    truth = rng.integers(0, 3, 40)
    predicted = np.where(rng.random(40) < hit_rate, truth, rng.integers(0, 3, 40))
    dynamic = strategy == "dynamic"
    events = [{"epoch": 3, "groups": [5, 6], "num_unfrozen": 2, "lr": 1e-4}] if dynamic else []
    timeline = [
        {
            "epoch": epoch,
            "train_loss": 1.0 / (epoch + 1),
            "val_loss": 1.1 / (epoch + 1),
            "lr": 1e-3 if epoch < 3 else 1e-4,
            "num_unfrozen": 0 if epoch < 3 else 2,
        }
        for epoch in range(6)
    ]
    run = {
        "framework": "torch",
        "backbone": backbone,
        "strategy": strategy,
        "seed": seed,
        "weights": "none (random init)",
        "data": "phantom",
        "synthetic": True,
        "image_size": 32,
        "lr": 1e-3,
        "unfrozen_lr_ratio": 1.0 if dynamic else None,
        **classification_metrics(truth, predicted, CLASS_NAMES),
        "class_names": CLASS_NAMES,
        "epochs": 6,
        "best_epoch": 4,
        "wall_s": 1.25,
        "size_mb": 3.5,
        "load_s": 0.01,
        "top_n": None if dynamic else 5,
        "num_groups": 6 if dynamic else None,
        "unfreeze_events": events,
        "timeline": timeline,
        "baselines": trivial_baselines(TRAIN_LABELS, truth, CLASS_NAMES),
    }
    run["sanity"] = sanity_flags(run, run["baselines"])
    return run

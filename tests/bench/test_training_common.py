"""Framework-free pieces the Keras and PyTorch study runners share."""

from __future__ import annotations

import pytest

from benchmarks.presets import StudyConfig, StudyConfigError
from benchmarks.training_common import unfreeze_events
from dynft_core import UnfreezeScheduler


def test_unfreeze_events_replay_the_learning_rate_after_each_decay() -> None:
    scheduler = UnfreezeScheduler(5, patience=1, step=2, decay=0.5, max_epochs=10)
    for value in (1.0, 2.0, 3.0, 0.5, 0.6):
        scheduler.step(value)
    assert unfreeze_events(scheduler.history, 0.1) == [
        {"epoch": 2, "groups": [3, 4], "num_unfrozen": 2, "lr": 0.05},
        {"epoch": 3, "groups": [1, 2], "num_unfrozen": 4, "lr": 0.025},
        {"epoch": 5, "groups": [0], "num_unfrozen": 5, "lr": 0.0125},
    ]


def test_top_n_takes_the_override_and_refuses_more_layers_than_the_backbone_has() -> None:
    cfg = StudyConfig(top_n={"vgg16": 4})
    assert cfg.top_n_for("vgg16", 10, 20, "weight layers of") == 4
    assert cfg.top_n_for("resnet50", 5, 20, "weight layers of") == 5
    with pytest.raises(
        StudyConfigError,
        match=r"^--top-n vgg16=4 exceeds the 3 layers of the Keras vgg16; use at most 3$",
    ):
        cfg.top_n_for("vgg16", 10, 3, "layers of the Keras")

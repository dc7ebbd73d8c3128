"""Run records the Keras and PyTorch study runners share."""

from __future__ import annotations

from benchmarks.study.runners.records import unfreeze_events
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

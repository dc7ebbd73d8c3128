"""TrainingData: what each --balance mode does to the batches and the loss weights."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.study.data.batches import SplitArrays, TrainingData

LABELS = np.array([0] * 90 + [1] * 10)


def _data(balance: str) -> TrainingData:
    split = SplitArrays(np.zeros((100, 4, 4), dtype=np.uint8), LABELS)
    return TrainingData(split, split, split, num_classes=2, batch_size=32, seed=0, balance=balance)


def _epoch_share_and_weights(data: TrainingData) -> tuple[float, np.ndarray]:
    plan = np.concatenate(data.epoch_plan())
    _, labels, weights = data.train_batch(plan)
    return float(np.mean(labels == 1)), dict(zip(labels.tolist(), weights.tolist(), strict=False))


@pytest.mark.parametrize(
    ("balance", "minority_share", "weights"),
    [
        ("none", 0.10, {0: 1.0, 1: 1.0}),
        ("weights", 0.10, {0: 100 / 180, 1: 100 / 20}),
        ("sampler", 0.50, {0: 1.0, 1: 1.0}),
        ("both", 0.50, {0: 100 / 180, 1: 100 / 20}),
        # sqrt(90) : sqrt(10) = 3 : 1 -> 25 % minority draws, weights 1 / (2 q)
        ("tempered", 0.25, {0: 1 / (2 * 0.75), 1: 1 / (2 * 0.25)}),
    ],
)
def test_each_mode_draws_and_weights_as_documented(balance, minority_share, weights) -> None:
    data = _data(balance)
    share, seen = _epoch_share_and_weights(data)
    assert share == pytest.approx(minority_share)
    assert seen == pytest.approx(weights)


@pytest.mark.parametrize("balance", ["none", "weights"])
def test_unsampled_modes_show_every_image_once_per_epoch(balance: str) -> None:
    plan = np.concatenate(_data(balance).epoch_plan())
    assert sorted(plan) == list(range(100))


def test_tempered_batches_each_hold_minority_images() -> None:
    data = _data("tempered")
    for batch in data.epoch_plan()[:-1]:
        assert 6 <= np.sum(LABELS[batch] == 1) <= 10  # 25 % of 32 = 8

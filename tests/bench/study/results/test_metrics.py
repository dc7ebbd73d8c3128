"""Per-run metrics against a hand-computed confusion matrix."""

from __future__ import annotations

import pytest

from benchmarks.study.results.metrics import classification_metrics

# true 0 0 1 1 2 2 2 / predicted 0 1 1 1 2 0 2:
#   class 0: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
#   class 1: TP 2, FP 1, FN 0 -> P 2/3, R 1,   F1 4/5
#   class 2: TP 2, FP 0, FN 1 -> P 1,   R 2/3, F1 4/5
Y_TRUE = [0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0, 2]


def test_against_hand_computed_confusion():
    scores = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(5 / 7)
    assert scores["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert scores["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert scores["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert scores["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert scores["per_class"]["c"]["recall"] == pytest.approx(2 / 3)
    expected = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1 / 3, 0.0, 2 / 3]]
    for row, expected_row in zip(scores["confusion_normalized"], expected, strict=True):
        assert row == pytest.approx(expected_row)


def test_absent_class_has_zero_row_and_does_not_count_in_macro_f1():
    scores = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c", "rare"])
    assert scores["confusion_normalized"][3] == [0.0, 0.0, 0.0, 0.0]
    assert scores["per_class"]["rare"]["support"] == 0
    assert scores["macro_f1"] == pytest.approx(0.7)
    assert scores["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)  # rare: no support


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="equal-length non-empty"):
        classification_metrics([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match=r"y_pred holds class 2, outside \[0, 1\]"):
        classification_metrics([0, 1], [0, 2], ["a", "b"])

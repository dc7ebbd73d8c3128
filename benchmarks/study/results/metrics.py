"""Test-set metrics of one run, computed with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(y_true, y_pred, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class scores and the normalised confusion.

    Macro-F1 averages over the classes that occur in ``y_true`` or ``y_pred`` (scikit-learn's
    default), so a class missing from a small test split does not count as a zero. Balanced
    accuracy is the mean recall over the classes that occur in ``y_true``. Undefined precision
    or recall (no predictions or no support) count as 0.

    Args:
        y_true: True class indices, shape ``(N,)``.
        y_pred: Predicted class indices, shape ``(N,)``.
        class_names: Name of every class index.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1"}`` as fractions in [0, 1], ``per_class``
        mapping each name to ``{"precision", "recall", "f1", "support"}``, and
        ``confusion_normalized`` (list of rows; row = true class, divided by its support; rows of
        absent classes are all zero).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    num_classes = len(class_names)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be equal-length non-empty 1-D arrays, got shapes "
            f"{y_true.shape} and {y_pred.shape}"
        )
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        bad = values[(values < 0) | (values >= num_classes)]
        if len(bad):
            raise ValueError(
                f"{name} holds class {int(bad[0])}, outside [0, {num_classes - 1}] for "
                f"{num_classes} class names"
            )
    all_classes = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_classes, zero_division=0
    )
    counts = confusion_matrix(y_true, y_pred, labels=all_classes).astype(float)
    row_totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(recall[support > 0])),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(class_names)
        },
        "confusion_normalized": normalized.tolist(),
    }

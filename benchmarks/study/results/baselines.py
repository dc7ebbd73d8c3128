"""Trivial predictors on a run's test split, and the sanity check of a run against them.

A model that scores no better than a predictor which never looks at an image has learnt nothing
useful, whatever its numbers look like. Two such predictors are scored on the same test split as
the runs, from the class frequencies of the same training split:

* ``majority``: always answers the most frequent training class (scored exactly);
* ``prior``: answers class ``i`` at random with its training share ``p_i`` (scored by its expected
  counts: accuracy ``sum_i t_i p_i``, recall of class ``i`` ``p_i``, precision ``t_i``, where
  ``t_i`` is the test share).

Chance is ``1 / C`` for both accuracy and balanced accuracy: what guessing uniformly scores, and the
balanced accuracy of every constant answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.study.results.metrics import classification_metrics

BASELINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
BASELINE_NAMES = {"majority": "majority class", "prior": "prior sampling"}


def trivial_baselines(
    train_labels: np.ndarray, test_labels: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Scores of the majority-class and prior-sampling predictors, and chance, on a test split.

    Args:
        train_labels: Labels of the training split (the predictors' only knowledge).
        test_labels: Labels of the test split the runs are scored on.
        class_names: Name of every class index.

    Returns:
        ``{"chance": 1 / C, "majority": {...}, "prior": {...}}``; each predictor holds
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``recall`` (per class name) and
        ``answers`` (what it predicts).
    """
    num_classes = len(class_names)
    train_counts = np.bincount(np.asarray(train_labels), minlength=num_classes)
    test_labels = np.asarray(test_labels)
    majority = int(np.argmax(train_counts))
    constant = classification_metrics(test_labels, np.full(len(test_labels), majority), class_names)
    return {
        "chance": 1.0 / num_classes,
        "majority": {
            **{metric: constant[metric] for metric in BASELINE_METRICS},
            "recall": {name: scores["recall"] for name, scores in constant["per_class"].items()},
            "answers": f"always {class_names[majority]!r}",
        },
        "prior": _prior_sampling(train_counts / train_counts.sum(), test_labels, class_names),
    }


def _prior_sampling(prior: np.ndarray, test_labels: np.ndarray, class_names: list[str]) -> dict:
    test_share = np.bincount(test_labels, minlength=len(class_names)) / len(test_labels)
    present = test_share > 0
    scored = present | (prior > 0)  # classes in the truth or the answers, as macro-F1 counts them
    denominator = test_share + prior
    f1 = np.divide(
        2 * test_share * prior, denominator, out=np.zeros_like(prior), where=denominator > 0
    )
    return {
        "accuracy": float(np.sum(test_share * prior)),
        "balanced_accuracy": float(np.mean(prior[present])),
        "macro_f1": float(np.mean(f1[scored])),
        "recall": {name: float(prior[index]) for index, name in enumerate(class_names)},
        "answers": "class i with its training share",
    }


def sanity_flags(run: dict[str, Any], baselines: dict[str, Any]) -> list[dict[str, Any]]:
    """Where a run's test scores are at or below chance or a trivial predictor.

    Args:
        run: The run dict (``accuracy``, ``balanced_accuracy``, ``macro_f1``).
        baselines: :func:`trivial_baselines` of the run's split.

    Returns:
        At most one ``{"metric", "value", "against", "threshold"}`` per metric: against
        ``"chance"`` when accuracy or balanced accuracy is at or below ``1 / C``, else against
        the better trivial predictor (``"majority"`` or ``"prior"``) when the run is not above
        it; empty when the run beats all of them on every metric.
    """
    flags = []
    for metric in BASELINE_METRICS:
        against = max(BASELINE_NAMES, key=lambda name: baselines[name][metric])
        if metric != "macro_f1" and run[metric] <= baselines["chance"]:
            flags.append(_flag(run, metric, "chance", baselines["chance"]))  # the worst case
        elif run[metric] <= baselines[against][metric]:
            flags.append(_flag(run, metric, against, baselines[against][metric]))
    return flags


def _flag(run: dict[str, Any], metric: str, against: str, threshold: float) -> dict[str, Any]:
    return {"metric": metric, "value": run[metric], "against": against, "threshold": threshold}


def describe(flag: dict[str, Any]) -> str:
    """``"balanced accuracy 25.0 % is at or below chance (25.0 %)"``, for reports and consoles."""
    metric = flag["metric"].replace("_", " ")
    value, threshold = 100 * flag["value"], 100 * flag["threshold"]
    if flag["against"] == "chance":
        return f"{metric} {value:.1f} % is at or below chance ({threshold:.1f} %)"
    name = BASELINE_NAMES[flag["against"]]
    return f"{metric} {value:.1f} % is not above the {name} predictor ({threshold:.1f} %)"


def degenerate(flags: list[dict[str, Any]]) -> bool:
    """Whether :func:`sanity_flags` found the run at or below chance (a collapsed classifier)."""
    return any(flag["against"] == "chance" for flag in flags)

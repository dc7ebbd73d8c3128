"""Best-value tracking shared by every validation-driven rule in dynft."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

MODES = ("min", "max")
CONFIG_MODES = ("auto", "min", "max")

# Name fragments of metrics where higher is better, and of those where lower is (``mode="auto"``).
# Lower-is-better names win: "val_accuracy_loss" is a loss.
_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse", "mape", "perplexity", "crossentropy")
_HIGHER_IS_BETTER = (
    "acc", "accuracy", "auc", "f1", "fbeta", "precision", "recall", "iou", "dice",
    "map", "kappa", "mcc", "r2", "score", "ap", "top_k", "top5", "top1", "bleu", "rouge",
)  # fmt: skip
_SPLIT_PREFIXES = ("val_", "eval_", "valid_", "validation_", "test_", "val/", "eval/", "valid/")


def check_mode(mode: object) -> str:
    """Return ``mode`` if it is ``"min"`` or ``"max"``; raise ``ValueError`` otherwise."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return str(mode)


def resolve_mode(mode: object, monitor: str | None) -> str:
    """The direction ``"min"`` / ``"max"`` for ``mode`` (``"auto"``, ``"min"`` or ``"max"``).

    ``"auto"`` reads the direction off the monitored name, like Keras callbacks: a name made of
    ``loss``, ``error``, ``mse``... is minimised, one made of ``acc``, ``accuracy``, ``auc``,
    ``f1``, ``precision``, ``recall``... is maximised (a ``val_``/``eval_`` prefix is ignored).

    Raises:
        ValueError: ``mode`` is none of the three, or ``"auto"`` cannot tell the direction of
            ``monitor`` (the message asks for an explicit mode).
    """
    if mode not in CONFIG_MODES:
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return str(mode)
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(
            "mode='auto' reads the direction off the monitored name, but no monitor name was "
            f"given (monitor={monitor!r}); pass monitor='val_loss' or the like, or mode='min'/'max'"
        )
    name = monitor.lower()
    for prefix in _SPLIT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    words = set(re.split(r"[^a-z0-9]+", name)) | {name}
    if any(w.endswith(low) or w.startswith(low) for w in words for low in _LOWER_IS_BETTER):
        return "min"
    if any(w in _HIGHER_IS_BETTER or w.endswith("accuracy") for w in words):
        return "max"
    raise ValueError(
        f"mode='auto' cannot tell whether {monitor!r} should go down or up; pass mode='min' "
        "(a loss or an error) or mode='max' (accuracy, AUC, F1 ...)"
    )


def check_min_delta(min_delta: object) -> float:
    """Return ``min_delta`` as a float if it is a finite number >= 0."""
    if (
        isinstance(min_delta, bool)
        or not isinstance(min_delta, numbers.Real)
        or not math.isfinite(float(min_delta))
        or float(min_delta) < 0
    ):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
    return float(min_delta)


def as_metric(value: object) -> float:
    """Convert a monitored value (Python/NumPy number, 0-d tensor) to ``float``.

    Raises:
        TypeError: ``value`` is not a single real number.
    """
    # NumPy's bool and complex scalars define __float__ but are no monitored value
    is_boolean = isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")
    is_complex = isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)
    if (
        isinstance(value, (str, bytes))
        or is_boolean
        or is_complex
        or not hasattr(value, "__float__")
    ):
        raise TypeError(
            f"the monitored value must be a real number, got {type(value).__name__}: {value!r}"
        )
    try:
        return float(value)
    except OverflowError:
        # an int or Fraction beyond float range is still a real number, just not a finite one
        return -math.inf if value < 0 else math.inf  # type: ignore[operator]
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"the monitored value must be a single real number, got {type(value).__name__}"
        ) from err


class PlateauMonitor:
    """Tracks the best value of a monitored metric and epochs without improvement.

    A NaN or infinite value is never an improvement; it counts towards the
    plateau like any other non-improving epoch.

    Args:
        mode: ``"min"`` (default) if lower is better, ``"max"`` if higher is.
        min_delta: Minimum change that counts as an improvement. Defaults to 0.

    Attributes:
        best: Best finite value seen so far (``inf``/``-inf`` before any).
        best_epoch: Epoch of ``best`` (1-based), ``None`` before any.
        wait: Consecutive non-improving updates since the last improvement
            (or since the last ``reset_wait()``).
    """

    def __init__(self, mode: str = "min", min_delta: float = 0.0) -> None:
        self.mode = check_mode(mode)
        self.min_delta = check_min_delta(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.wait = 0

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` would be a new best (without recording it)."""
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` seen at ``epoch``; return whether it improved."""
        if self.is_improvement(value):
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            return True
        self.wait += 1
        return False

    def reset_wait(self) -> None:
        """Start counting the plateau afresh (the best value is kept)."""
        self.wait = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-plain state: ``best`` is ``None`` while no finite value was seen."""
        return {
            "best": self.best if self.best_epoch is not None else None,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state produced by ``state_dict()``."""
        best = state["best"]
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        if best is None:
            self.best = math.inf if self.mode == "min" else -math.inf
        else:
            self.best = float(best)
        self.wait = int(state["wait"])

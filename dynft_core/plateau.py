"""Best-value tracking shared by every validation-driven rule in dynft."""

from __future__ import annotations

import math
import numbers
from typing import Any

MODES = ("min", "max")


def check_mode(mode: object) -> str:
    """Return ``mode`` if it is ``"min"`` or ``"max"``; raise ``ValueError`` otherwise."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return str(mode)


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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state produced by ``state_dict()``."""
        best = state["best"]
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        if best is None:
            self.best = math.inf if self.mode == "min" else -math.inf
        else:
            self.best = float(best)
        self.wait = int(state["wait"])

"""Micro-benchmark of the pure-Python core: what one ``step()`` and one ``state_dict()`` cost.

Usage::

    python -m benchmarks.perf.core_step_cost [--repeat 200] [--epochs 100]

Prints the median over ``--repeat`` timings, in microseconds per call. ``step()`` is
timed over whole runs of a noisy, slowly improving validation curve with the paper's
defaults (L=10 groups, patience 5, step 3), so improvements, waits, unfreezes and the
final stop are all in the mix. ``state_dict()`` grows with the history, so it is timed
after 10 epochs and after the whole run.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import timeit
from collections.abc import Sequence
from typing import Any

from dynft_core import UnfreezeScheduler

CONFIG: dict[str, Any] = {"num_groups": 10, "patience": 5, "step": 3, "decay": 0.1}


def validation_curve(epochs: int, seed: int = 0) -> list[float]:
    """A loss that improves ever more slowly, with noise, like a real fine-tuning run.

    Args:
        epochs: Number of values.
        seed: Seed of the noise. Defaults to 0.
    """
    rng = random.Random(seed)
    return [1.0 / math.sqrt(1.0 + 0.2 * t) + rng.gauss(0.0, 0.02) for t in range(epochs)]


def run_until_stop(values: Sequence[float]) -> UnfreezeScheduler:
    """Step a fresh scheduler through ``values`` until it says stop."""
    scheduler = UnfreezeScheduler(**CONFIG, max_epochs=len(values))
    for value in values:
        if scheduler.step(value).stop:
            break
    return scheduler


def median_microseconds(timer: timeit.Timer, repeat: int, number: int, calls: int) -> float:
    """Median over ``repeat`` timings of ``number`` executions, per call, in µs.

    Args:
        timer: What to time.
        repeat: Number of timings; the median resists a busy machine better than the mean.
        number: Executions of the statement per timing.
        calls: Calls of the measured function per execution of the statement.
    """
    timings = timer.repeat(repeat=repeat, number=number)
    return statistics.median(timings) / (number * calls) * 1e6


def step_cost(values: Sequence[float], repeat: int) -> tuple[float, int]:
    """Median µs per ``step()`` over whole runs, and the number of steps in one run."""
    steps = run_until_stop(values).epoch
    timer = timeit.Timer(lambda: run_until_stop(values))
    # a run includes one construction; its share of the per-step figure is reported honestly
    return median_microseconds(timer, repeat, number=1, calls=steps), steps


def state_dict_cost(values: Sequence[float], repeat: int) -> tuple[float, int]:
    """Median µs per ``state_dict()`` after stepping through ``values``, and the history length."""
    scheduler = run_until_stop(values)
    timer = timeit.Timer(scheduler.state_dict)
    return median_microseconds(timer, repeat, number=20, calls=1), len(scheduler.history)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, time, print.

    Args:
        argv: Command-line arguments without the program name. Defaults to ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="timings per figure (200)")
    parser.add_argument("--epochs", type=int, default=100, help="epoch budget of a run (100)")
    args = parser.parse_args(argv)

    curve = validation_curve(args.epochs)
    per_step, steps = step_cost(curve, args.repeat)
    early, early_len = state_dict_cost(curve[:10], args.repeat)
    full, full_len = state_dict_cost(curve, args.repeat)

    print(
        f"dynft_core step cost, {platform.python_implementation()} {platform.python_version()}, "
        f"median of {args.repeat} timings"
    )
    setting = ", ".join(f"{key}={value}" for key, value in CONFIG.items())
    print(f"  step()        {per_step:8.2f} µs  (whole runs of {steps} epochs, {setting})")
    print(f"  state_dict()  {early:8.2f} µs  (history of {early_len} decisions)")
    print(f"  state_dict()  {full:8.2f} µs  (history of {full_len} decisions)")


if __name__ == "__main__":
    main()

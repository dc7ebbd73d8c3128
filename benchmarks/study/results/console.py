"""What the study prints: a loud warning after a run at or below a trivial baseline, and the
closing summary."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.study.results.baselines import BASELINE_NAMES, degenerate, describe
from benchmarks.study.results.figures import run_name

RULE = "!" * 78


def warn_if_flagged(run: dict[str, Any], write: Callable[..., None]) -> None:
    """Print a boxed warning to stderr when the run has sanity flags (``write``: tqdm.write)."""
    flags = run.get("sanity") or []
    if not flags:
        return
    kind = "AT OR BELOW CHANCE" if degenerate(flags) else "NOT ABOVE A TRIVIAL PREDICTOR"
    lines = [RULE, f"WARNING: {run_name(run)} is {kind}:"]
    lines += [f"  - {describe(flag)}" for flag in flags]
    write("\n".join([*lines, RULE]), file=sys.stderr)


def print_summary(runs: list[dict[str, Any]], report: Path, seconds: float) -> None:
    """One line per run, the trivial predictors of each seed, the warnings, where the report is."""
    header = (
        f"{'backbone':<18} {'strategy':<12} {'seed':>4} {'acc':>6} {'bal.acc':>7} "
        f"{'macroF1':>7} {'epochs':>6} {'unfreezes':>9} {'wall s':>7} {'MB':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    seeds_shown: set[int] = set()
    for r in runs:
        print(
            f"{r['backbone']:<18} {r['strategy']:<12} {r['seed']:>4} {r['accuracy']:>6.3f} "
            f"{r['balanced_accuracy']:>7.3f} {r['macro_f1']:>7.3f} {r['epochs']:>6} "
            f"{len(r['unfreeze_events']):>9} {r['wall_s']:>7.1f} {r['size_mb']:>6.1f}"
            + ("  <- FLAGGED" if r.get("sanity") else "")
        )
    for r in runs:
        if r["seed"] in seeds_shown or "baselines" not in r:
            continue
        seeds_shown.add(r["seed"])
        for key, name in BASELINE_NAMES.items():
            scores = r["baselines"][key]
            print(
                f"{'(' + name + ')':<31} {r['seed']:>4} {scores['accuracy']:>6.3f} "
                f"{scores['balanced_accuracy']:>7.3f} {scores['macro_f1']:>7.3f}"
            )
    flagged = [r for r in runs if r.get("sanity")]
    if flagged:
        title = f"WARNING: {len(flagged)} of {len(runs)} runs are at or below a trivial baseline:"
        lines = [RULE, title]
        lines += [f"  {run_name(r)}: " + "; ".join(map(describe, r["sanity"])) for r in flagged]
        print("\n" + "\n".join([*lines, RULE]), file=sys.stderr)
    if any(r["synthetic"] for r in runs):
        print("\nSYNTHETIC phantom data: these numbers test the pipeline, they are not clinical.")
    print(f"\nStudy finished in {seconds / 60:.1f} min. Report: {report}")

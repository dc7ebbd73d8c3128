"""Whether two studies gave the same numbers: ``python -m benchmarks.study.results.repeatability``.

Usage::

    python -m benchmarks.study.results.repeatability FIRST/results.json SECOND/results.json

Compares every run field (metrics, per-class scores, confusion matrices, timelines, unfreeze
events, baselines, sanity flags) exactly, except the ones that measure time; exits 0 when the
two studies are identical and 1 with the differences listed otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# the feature cache's time saved is a timing too; its detail holds its build and saved times
TIMING_KEYS = frozenset({"wall_s", "load_s", "cache_saved_s", "feature_cache_detail"})


def run_key(run: dict[str, Any]) -> tuple[Any, ...]:
    """How a run is matched between studies."""
    return (run["framework"], run["backbone"], run["strategy"], run["seed"], run.get("lr"))


def differences(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[str]:
    """Every difference between two lists of run dicts, timings excluded; empty if identical."""
    found = []
    left = {run_key(run): run for run in first}
    right = {run_key(run): run for run in second}
    for key in sorted(set(left) ^ set(right), key=str):
        found.append(f"run {key} is in only one study")
    for key in [key for key in left if key in right]:
        for field in sorted((set(left[key]) | set(right[key])) - TIMING_KEYS):
            if left[key].get(field) != right[key].get(field):
                found.append(
                    f"run {key}: {field} differs ({_short(left[key].get(field))} vs "
                    f"{_short(right[key].get(field))})"
                )
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 when identical, 1 when not."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study.results.repeatability",
        description="Check that two studies gave identical numbers (timings excluded).",
    )
    parser.add_argument("first", type=Path, help="results.json of one study")
    parser.add_argument("second", type=Path, help="results.json of the other")
    args = parser.parse_args(argv)
    documents = []
    for path in (args.first, args.second):
        try:
            documents.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            parser.error(f"cannot read {path} as a study's results.json: {error}")
    found = differences(documents[0]["runs"], documents[1]["runs"])
    if found:
        print(f"{len(found)} difference(s):\n" + "\n".join(f"  {line}" for line in found))
        return 1
    count = len(documents[0]["runs"])
    print(f"identical: {count} runs, every field equal except {', '.join(sorted(TIMING_KEYS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

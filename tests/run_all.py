"""Run every test group in its own pytest process and summarise.

TensorFlow and torch must not share a process, and each Keras backend needs
its own, so the suite is split into groups. A group that collects no test
(pytest exit code 5) counts as a failure.

Usage: python tests/run_all.py [GROUP ...] [-- PYTEST_ARGS ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GROUPS: dict[str, tuple[list[str], dict[str, str]]] = {
    "core": (["tests/core", "tests/bench"], {}),
    "torch": (["tests/torch"], {}),
    "transformers": (["tests/transformers"], {}),
    "keras-tensorflow": (["tests/keras"], {"KERAS_BACKEND": "tensorflow"}),
    "keras-torch": (["tests/keras"], {"KERAS_BACKEND": "torch"}),
    "keras-jax": (["tests/keras"], {"KERAS_BACKEND": "jax"}),
}
NO_TESTS_COLLECTED = 5


def count_outcomes(junit_xml: Path) -> dict[str, int]:
    """Passed/failed/skipped test counts from a pytest JUnit XML file (zeros if missing)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not junit_xml.is_file():
        return counts
    for suite in ET.parse(junit_xml).getroot().iter("testsuite"):
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        counts["passed"] += tests - failed - skipped
        counts["failed"] += failed
        counts["skipped"] += skipped
    return counts


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    unknown = [name for name in argv if name not in GROUPS]
    if unknown:
        print(f"unknown group(s) {unknown}; choose from {list(GROUPS)}", file=sys.stderr)
        return 2
    selected = argv or list(GROUPS)
    outcomes: list[tuple[str, int, float, dict[str, int]]] = []
    with tempfile.TemporaryDirectory() as reports:
        for name in selected:
            paths, env_extra = GROUPS[name]
            env = {**os.environ, **env_extra}
            junit = Path(reports) / f"{name}.xml"
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                *paths,
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                *extra,
            ]
            print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            code = subprocess.call(cmd, cwd=ROOT, env=env)
            outcomes.append((name, code, time.perf_counter() - start, count_outcomes(junit)))
    print("\n=== summary")
    failed = 0
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for name, code, seconds, counts in outcomes:
        for key in totals:
            totals[key] += counts[key]
        if code == 0:
            verdict = "ok"
        elif code == NO_TESTS_COLLECTED:
            verdict = "FAILED (no tests collected)"
        else:
            verdict = f"FAILED (pytest exit {code})"
        failed += code != 0
        print(f"{name:18s} {verdict:30s} {seconds:7.1f} s  {counts}")
    print(f"groups: {len(outcomes) - failed} passed, {failed} failed")
    print(
        f"tests: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

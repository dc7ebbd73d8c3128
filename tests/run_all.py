"""Run every test group in its own pytest process and summarise.

TensorFlow and torch must not share a process, and each Keras backend needs
its own, so the suite is split into groups. A group that collects no test
(pytest exit code 5) counts as a failure. Groups run side by side, two at a
time on a machine with two or more CPUs (``--jobs N`` or ``DYNFT_TEST_JOBS``
sets it): most tests are small and single-threaded or wait on the processes
they start, so two groups share two cores well.

Usage: python tests/run_all.py [GROUP ...] [--jobs N] [-- PYTEST_ARGS ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

GROUPS: dict[str, tuple[list[str], dict[str, str]]] = {
    "core": (["tests/core", "tests/bench"], {}),
    "torch": (["tests/torch"], {}),
    "transformers": (["tests/transformers"], {}),
    "keras-tensorflow": (["tests/keras"], {"KERAS_BACKEND": "tensorflow"}),
    "keras-torch": (["tests/keras"], {"KERAS_BACKEND": "torch"}),
    "keras-jax": (["tests/keras"], {"KERAS_BACKEND": "jax"}),
}
# Rough group lengths on a 2-core machine: the longest start first, so that groups run side by
# side finish close together.
EXPECTED_SECONDS = {
    "keras-jax": 600,
    "keras-torch": 500,
    "torch": 420,
    "keras-tensorflow": 400,
    "transformers": 300,
    "core": 150,
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


def parse_args(argv: list[str]) -> tuple[list[str], int, list[str]] | str:
    """``GROUP ... [--jobs N] [-- PYTEST_ARGS]`` -> (groups, jobs, pytest args), or an error."""
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    jobs_text = os.environ.get("DYNFT_TEST_JOBS", str(min(2, os.cpu_count() or 1)))
    if "--jobs" in argv:
        at = argv.index("--jobs")
        jobs_text = argv[at + 1] if at + 1 < len(argv) else ""
        argv = argv[:at] + argv[at + 2 :]
    if not jobs_text.isdigit() or int(jobs_text) < 1:
        return f"--jobs (or DYNFT_TEST_JOBS) must be a whole number >= 1, got {jobs_text!r}"
    unknown = [name for name in argv if name not in GROUPS]
    if unknown:
        return f"unknown group(s) {unknown}; choose from {list(GROUPS)}"
    return argv or list(GROUPS), int(jobs_text), extra


def run_groups(
    selected: list[str], jobs: int, extra: list[str], reports: Path
) -> dict[str, tuple[int, float, dict[str, int]]]:
    """Run the groups, ``jobs`` at a time, longest first; each group's output is printed whole
    when it ends, so the logs of concurrent groups do not interleave."""
    waiting = sorted(selected, key=lambda name: -EXPECTED_SECONDS.get(name, 0))
    running: dict[str, tuple[subprocess.Popen[bytes], float, Any]] = {}
    outcomes: dict[str, tuple[int, float, dict[str, int]]] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            paths, env_extra = GROUPS[name]
            junit = reports / f"{name}.xml"
            cmd = [sys.executable, "-m", "pytest", *paths, "-p", "no:cacheprovider",
                   f"--junitxml={junit}", *extra]  # fmt: skip
            print(f"=== {name} started: {' '.join(cmd[1:])}", flush=True)
            log = open(reports / f"{name}.log", "w+b")  # noqa: SIM115 (closed when it ends)
            process = subprocess.Popen(
                cmd, cwd=ROOT, env={**os.environ, **env_extra}, stdout=log, stderr=subprocess.STDOUT
            )
            running[name] = (process, time.perf_counter(), log)
        time.sleep(0.5)
        for name, (process, start, log) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            seconds = time.perf_counter() - start
            log.seek(0)
            print(f"\n=== {name} ({seconds:.0f} s)", flush=True)
            sys.stdout.buffer.write(log.read())
            sys.stdout.flush()
            log.close()
            outcomes[name] = (process.returncode, seconds, count_outcomes(reports / f"{name}.xml"))
    return outcomes


def main(argv: list[str]) -> int:
    parsed = parse_args(argv)
    if isinstance(parsed, str):
        print(parsed, file=sys.stderr)
        return 2
    selected, jobs, extra = parsed
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as reports:
        outcomes = run_groups(selected, jobs, extra, Path(reports))
    print(f"\n=== summary ({jobs} group(s) at a time, {time.perf_counter() - start:.0f} s in all)")
    failed = 0
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for name in selected:
        code, seconds, counts = outcomes[name]
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
    print(f"groups: {len(selected) - failed} passed, {failed} failed")
    print(
        f"tests: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

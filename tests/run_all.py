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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GROUPS: dict[str, tuple[list[str], dict[str, str]]] = {
    "core": (["tests/core", "tests/bench"], {}),
    "torch": (["tests/torch"], {}),
    "keras-tensorflow": (["tests/keras"], {"KERAS_BACKEND": "tensorflow"}),
    "keras-torch": (["tests/keras"], {"KERAS_BACKEND": "torch"}),
    "keras-jax": (["tests/keras"], {"KERAS_BACKEND": "jax"}),
}
NO_TESTS_COLLECTED = 5


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
    outcomes: list[tuple[str, int, float]] = []
    for name in selected:
        paths, env_extra = GROUPS[name]
        env = {**os.environ, **env_extra}
        cmd = [sys.executable, "-m", "pytest", *paths, "-p", "no:cacheprovider", *extra]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        outcomes.append((name, code, time.perf_counter() - start))
    print("\n=== summary")
    failed = 0
    for name, code, seconds in outcomes:
        if code == 0:
            verdict = "ok"
        elif code == NO_TESTS_COLLECTED:
            verdict = "FAILED (no tests collected)"
        else:
            verdict = f"FAILED (pytest exit {code})"
        failed += code != 0
        print(f"{name:18s} {verdict:30s} {seconds:7.1f} s")
    print(f"groups: {len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

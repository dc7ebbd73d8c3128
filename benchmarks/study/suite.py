"""Suites: several studies in one command, e.g. ``python -m benchmarks.study --preset evidence``.

A suite's parts may use different frameworks (TensorFlow and torch never share a process), so
each part runs as its own ``python -m benchmarks.study --preset PART`` process into
``OUT/PART``; the suite then writes ``OUT/report.md`` from the parts' results. Flags given to
the suite (``--seeds``, ``--epochs``, ``--sweep`` ...) are passed on to every part.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.study.config import StudyConfigError
from benchmarks.study.out_folder import claim_out_folder

SUITES = {"evidence": ("evidence-covid", "evidence-pneumonia")}
# Flags that would make the parts something else than the suite defines.
PART_DEFINING_FLAGS = ("--framework", "--data", "--backbones", "--weights", "--image-size")


def check_suite_flags(name: str, flags: list[str]) -> None:
    """Refuse flags that redefine a suite's parts.

    Raises:
        StudyConfigError: One of :data:`PART_DEFINING_FLAGS` was given.
    """
    given = sorted({flag.split("=")[0] for flag in flags} & set(PART_DEFINING_FLAGS))
    if given:
        raise StudyConfigError(
            f"--preset {name} runs the parts {list(SUITES[name])}, each with its own data, "
            f"framework and backbone; drop {', '.join(given)} (or run one part's preset)"
        )


def run_suite(name: str, out_dir: Path, flags: list[str]) -> tuple[Path, list[dict]]:
    """Run every part of suite ``name`` into ``out_dir/PART`` and write the suite's report.

    Args:
        name: A key of :data:`SUITES`.
        out_dir: New or empty folder of the suite.
        flags: Command-line flags passed on to every part.

    Returns:
        The suite report's path and one ``{"part", "status", "wall_s", "out"}`` per part.
    """
    from benchmarks.study.results.suite_report import write_suite_report

    folder = claim_out_folder(out_dir)
    parts = []
    try:
        for part in SUITES[name]:
            start = time.perf_counter()
            command = [sys.executable, "-m", "benchmarks.study", "--preset", part]
            status = subprocess.call([*command, *flags, "--out", str(out_dir / part)])
            parts.append(
                {"part": part, "status": status, "wall_s": time.perf_counter() - start,
                 "out": part}
            )  # fmt: skip
    except BaseException as error:
        # a part stopped by Ctrl-C wrote its own partial report; keep what finished
        if not any((out_dir / part).is_dir() for part in SUITES[name]):
            folder.discard()
            raise
        stopped = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else repr(error)
        write_suite_report(out_dir, name, parts, incomplete=f"{stopped} during the parts")
        raise
    return write_suite_report(out_dir, name, parts), parts

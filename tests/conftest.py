"""Shared fixtures: where the optional reference data lives, and Hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The read-only reference folder: ``$DYNFT_SHARED`` or ``../shared`` beside the repo."""
    return Path(os.environ.get("DYNFT_SHARED", REPO_ROOT.parent / "shared"))


def shared_file(relative: str) -> Path:
    """Path of a file under the shared folder; skips the calling test when it is absent."""
    path = shared_dir() / relative
    if not path.is_file():
        pytest.skip(f"reference file {relative} not found under {shared_dir()}")
    return path


try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the framework test groups do not need hypothesis
    pass
else:
    settings.register_profile(
        "ci", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("dev", max_examples=100, deadline=None)
    settings.load_profile(
        os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
    )

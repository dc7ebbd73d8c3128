"""The software environment a study ran in, recorded in every report."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any


def environment(packages: list[str]) -> dict[str, Any]:
    """Python, platform and installed versions of ``packages`` (``None`` if absent)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "packages": versions,
    }

"""pyproject.toml ships every benchmarks package and data file (normal and editable installs)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folders() -> set[str]:
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "benchmarks").rglob("__init__.py")
    }


def test_every_benchmarks_package_is_listed() -> None:
    listed = {name for name in SETUPTOOLS["packages"] if name.split(".")[0] == "benchmarks"}
    assert listed == _package_folders()


def test_every_data_file_of_a_benchmarks_package_is_package_data() -> None:
    globs = SETUPTOOLS["package-data"]
    for package in _package_folders():
        folder = ROOT / package.replace(".", "/")
        patterns = globs.get(package, [])
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern!r} matches no file"
        for file in folder.iterdir():
            if file.is_file() and file.suffix not in (".py", ".pyc"):
                assert any(fnmatch.fnmatch(file.name, p) for p in patterns), (
                    f"{file.relative_to(ROOT)} is not in [tool.setuptools.package-data] {package}"
                )

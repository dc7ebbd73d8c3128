"""The study's output folder: never mixed with an earlier study, removed if nothing finished."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.study.config import StudyConfigError


@dataclass
class OutFolder:
    """An output folder claimed for one study.

    Args:
        path: The folder.
        created: The topmost folder this study created (``path`` or an ancestor), or ``None``
            when ``path`` existed (empty) before.
    """

    path: Path
    created: Path | None

    def discard(self) -> None:
        """Undo the claim: remove what this study created, leaving the disk as it was."""
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for child in self.path.iterdir():  # the folder was empty: all of this is ours
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def check_out_folder(path: Path) -> None:
    """Refuse a folder that holds anything, or a path that is a file.

    Raises:
        StudyConfigError: ``path`` is a file or a non-empty folder.
    """
    if path.is_file():
        raise StudyConfigError(f"--out {path} is a file; give a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise StudyConfigError(
            f"--out {path} already holds files (an earlier study?); give a new or empty folder"
        )


def claim_out_folder(path: Path) -> OutFolder:
    """Create ``path`` (and its missing parents) for a study, after :func:`check_out_folder`."""
    check_out_folder(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return OutFolder(path, missing[-1] if missing else None)

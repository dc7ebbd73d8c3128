"""Markdown cells and tables of the study's reports."""

from __future__ import annotations

import math
from typing import Any


def table(header: str, rows: list[list[Any]]) -> list[str]:
    """Markdown table; ``header`` is the column titles joined by ``|``."""
    columns = header.split("|")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, ``–`` when missing or not finite."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100 * value:.{digits}f}"


def number(value: float | None, pattern: str) -> str:
    """``pattern.format(value)``, or ``–`` when the value is missing or not finite."""
    return "–" if value is None or not math.isfinite(value) else pattern.format(value)

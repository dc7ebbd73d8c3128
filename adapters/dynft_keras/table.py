"""The group table: what each group holds and whether it trains."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from .freezing import group_variables

_NAMES_WIDTH = 60


def group_table(
    groups: Sequence[Sequence[keras.layers.Layer]],
    num_unfrozen: int,
    batch_norm: Sequence[Sequence[keras.layers.Layer]] | None = None,
) -> str:
    """One line per group, shallowest first: index, layer names, parameters, state.

    Args:
        groups: The resolved groups.
        num_unfrozen: How many of the deepest groups are trainable.
        batch_norm: Per group, the BatchNormalization layers that train with it (their
            parameters are counted and their names shown in brackets).
    """
    batch_norm = batch_norm or [[] for _ in groups]
    rows = [("group", "layers", "parameters", "state")]
    total = 0
    for index, (group, bn) in enumerate(zip(groups, batch_norm, strict=True)):
        count = sum(int(np.prod(v.shape)) for v in group_variables(group, bn))
        total += count
        names = ", ".join([layer.name for layer in group] + [f"[{layer.name}]" for layer in bn])
        if len(names) > _NAMES_WIDTH:
            names = names[: _NAMES_WIDTH - 3] + "..."
        state = "trainable" if index >= len(groups) - num_unfrozen else "frozen"
        rows.append((str(index), names, f"{count:,}", state))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [
        "  ".join(
            cell.rjust(width) if column in (0, 2) else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.append(
        f"{len(groups)} groups, {total:,} parameters, {num_unfrozen} unfrozen (deepest first)"
    )
    return "\n".join(lines)

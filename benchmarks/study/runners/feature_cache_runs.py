"""The study's use of the feature cache, framework-free: its modes, limits and run-record fields.

With ``--feature-cache auto`` (the default) both runners compute the frozen part of the backbone
once per trainable set and reuse it for the validation pass of every epoch and for the training
samples that are not augmented in that epoch; ``off`` computes every forward in full. The
memory limit (``--feature-cache-max-gb``, default half of the memory available when the run
starts) is shared by the run's caches in proportion to the images each holds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from dynft_core.feature_cache import FeatureCacheStats, resolve_limit

FEATURE_CACHE_MODES = ("auto", "off")
DEFAULT_FEATURE_CACHE = "auto"
# The run-record fields (also results.csv columns); the time saved is a timing, see
# benchmarks.study.results.repeatability.
RECORD_FIELDS = ("feature_cache", "cache_hit_rate", "cache_size_mb", "cache_saved_s")


def split_limits(max_gb: float | None, images: Mapping[str, int]) -> dict[str, int]:
    """The byte limit of each cache, ``max_gb`` (or the default) shared by image count.

    Args:
        max_gb: The limit of all caches of the run together, ``None`` for the default.
        images: Images each cache holds (a training cache counts its gathered copy too).
    """
    total = resolve_limit(None, max_gb)
    count = sum(images.values())
    return {name: max(1, total * size // max(count, 1)) for name, size in images.items()}


def padded_batches(
    positions: np.ndarray, batch_size: int, pad: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions to load, positions to report)`` per batch of ``positions``, in order.

    With ``pad`` the last batch is filled up to ``batch_size`` with copies of its first sample,
    reported at position -1: CPU kernels may pick their algorithm by batch size, so features
    computed in a batch of the training batch size equal those of a plain training batch bit
    for bit.
    """
    for start in range(0, len(positions), batch_size):
        chosen = positions[start : start + batch_size]
        missing = batch_size - len(chosen) if pad else 0
        yield (
            np.concatenate([chosen, chosen[:1].repeat(missing)]),
            np.concatenate([chosen, np.full(missing, -1, dtype=chosen.dtype)]),
        )


def warn_uncacheable(error: Exception) -> None:
    """Announce that a run's model cannot be cut (the run then computes every forward)."""
    warnings.warn(
        f"feature cache off for this run: {error}; every forward runs in full",
        RuntimeWarning,
        stacklevel=3,
    )


class CacheFigures:
    """What a run reports of its caches: hits, largest size, time saved, fallbacks.

    Args:
        mode: ``"auto"`` or ``"off"``.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.caches: dict[str, FeatureCacheStats] = {}
        self.peak_bytes = 0

    def observe(self, caches: Mapping[str, FeatureCacheStats]) -> None:
        """Take the caches' figures now (after an epoch); the size kept is the largest seen."""
        self.caches.update(caches)
        self.peak_bytes = max(self.peak_bytes, sum(s.size_bytes for s in caches.values()))

    def record(self) -> dict[str, Any]:
        """The run-record fields (:data:`RECORD_FIELDS`) plus ``feature_cache_detail``: each
        cache's :meth:`~dynft_core.feature_cache.FeatureCacheStats.as_dict`."""
        hits = sum(stats.hits for stats in self.caches.values())
        passes = hits + sum(stats.misses for stats in self.caches.values())
        return {
            "feature_cache": self.mode,
            "cache_hit_rate": hits / passes if passes else 0.0,
            "cache_size_mb": self.peak_bytes / 1e6,
            "cache_saved_s": sum(stats.seconds_saved for stats in self.caches.values()),
            "feature_cache_detail": {name: stats.as_dict() for name, stats in self.caches.items()},
        }

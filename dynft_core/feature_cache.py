"""When the adapters' feature caches serve, build or recompute, and the figures they report.

While the deepest groups train, the frozen part below them is a fixed function of the input, so
its output can be computed once and reused until the trainable set changes. The adapters find
the cut, compute and store the features; this module takes the decisions, framework-free:

* a pass *serves* the stored features when they were built for the current key (the number of
  unfrozen groups and a fingerprint of the frozen tensors), *builds* them when the key changed or
  no complete copy exists, and *computes* (the plain forward, nothing stored) when nothing is
  frozen or the features of this key do not fit the memory limit;
* the memory limit is checked before anything grows past it, and the first refusal is announced
  with one warning (later refusals only update :attr:`FeatureCacheStats.fallback`).
"""

from __future__ import annotations

import enum
import math
import numbers
import os
import shutil
import warnings
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1024**3
# Without an explicit limit the cache may take this share of the memory (or disk) free when it
# is created: enough for real savings, and the rest of the process keeps room to work.
DEFAULT_SHARE = 0.5
# Features go to the accelerator (when asked to) only if they take at most this share of its
# free memory, leaving the training step its room.
ACCELERATOR_SHARE = 0.25


class CacheAction(enum.Enum):
    """What one pass over the data does."""

    SERVE = "serve"
    BUILD = "build"
    COMPUTE = "compute"


@dataclass
class FeatureCacheStats:
    """Figures of one feature cache.

    Attributes:
        hits: Batches served from the stored features.
        misses: Batches whose frozen part was computed (building or recomputing).
        builds: How many times features were (re)built: once per trainable set that fit.
        size_bytes: Bytes of the features stored now.
        limit_bytes: The memory limit.
        build_seconds: Time spent computing the features while building them.
        seconds_saved: Estimated time saved: for every hit, the time its frozen part took when
            it was built, minus the time taken to serve it.
        cut: Where the model is cut now (a module or layer name), ``None`` when nothing is cut.
        fallback: Why the last pass computed instead of serving, ``None`` if it served or built.
    """

    hits: int = 0
    misses: int = 0
    builds: int = 0
    size_bytes: int = 0
    limit_bytes: int = 0
    build_seconds: float = 0.0
    seconds_saved: float = 0.0
    cut: str | None = None
    fallback: str | None = None

    @property
    def hit_rate(self) -> float:
        """Share of batches served from the cache (0.0 before the first batch)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, object]:
        """The figures as a plain dict (``hit_rate`` included), e.g. for a run record."""
        return {**asdict(self), "hit_rate": self.hit_rate}


def format_bytes(size: int) -> str:
    """``size`` in MiB below 1 GiB, else in GiB (``"12.3 MiB"``, ``"2.50 GiB"``)."""
    return f"{size / 2**20:.1f} MiB" if size < GIB else f"{size / GIB:.2f} GiB"


def free_memory_bytes() -> int:
    """Memory the system can still give (``MemAvailable`` on Linux, else free pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def resolve_limit(
    max_bytes: int | None, max_gb: float | None, directory: str | Path | None = None
) -> int:
    """The memory limit in bytes from ``max_bytes`` or ``max_gb`` (at most one of them).

    Without either, half of the memory available now (or, with ``directory``, of the free disk
    space there) is the limit.

    Raises:
        ValueError: Both are given, or a value is not a positive number.
    """
    if max_bytes is not None and max_gb is not None:
        raise ValueError(
            f"give max_bytes or max_gb, not both (got max_bytes={max_bytes!r}, max_gb={max_gb!r})"
        )
    if max_bytes is not None:
        if (
            isinstance(max_bytes, bool)
            or not isinstance(max_bytes, numbers.Integral)
            or max_bytes <= 0
        ):
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        return int(max_bytes)
    if max_gb is not None:
        if (
            isinstance(max_gb, bool)
            or not isinstance(max_gb, numbers.Real)
            or not math.isfinite(max_gb)
            or max_gb <= 0
        ):
            raise ValueError(f"max_gb must be a positive finite number, got {max_gb!r}")
        return max(1, int(float(max_gb) * GIB))
    free = shutil.disk_usage(directory).free if directory is not None else free_memory_bytes()
    return max(1, int(free * DEFAULT_SHARE))


def batch_count(data: object) -> int | None:
    """``len(data)`` when ``data`` knows it (an iterable dataset of unknown size does not)."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


class FeatureCachePolicy:
    """Decides, pass by pass, whether a feature cache serves, builds or computes.

    Args:
        limit_bytes: The most the stored features may take (see :func:`resolve_limit`).

    Attributes:
        stats: The :class:`FeatureCacheStats` kept up to date by the calls below.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.stats = FeatureCacheStats(limit_bytes=limit_bytes)
        self._key: Hashable | None = None
        self._complete = False
        self._refused: Hashable | None = None
        self._warned = False

    @property
    def limit_bytes(self) -> int:
        """The memory limit."""
        return self.stats.limit_bytes

    def begin_pass(self, key: Hashable | None, why_not: str = "nothing is frozen") -> CacheAction:
        """Decide what the pass that starts now does.

        Args:
            key: Identifies the features the current model would produce, ``None`` when there
                is nothing to cache.
            why_not: Why there is nothing to cache (kept in ``stats.fallback``).

        Returns:
            SERVE when complete features of ``key`` are stored, COMPUTE when there is nothing
            to cache or ``key``'s features were refused, else BUILD. A new key drops the stored
            features: the adapter frees them when it is not told to SERVE.
        """
        if key is None:
            self._forget()
            self.stats.fallback = why_not
            return CacheAction.COMPUTE
        if key != self._key:
            self._forget()
            self._key = key
        if self._refused == key:
            return CacheAction.COMPUTE
        self.stats.fallback = None
        return CacheAction.SERVE if self._complete else CacheAction.BUILD

    def _forget(self) -> None:
        self._key = None
        self._complete = False
        self.stats.size_bytes = 0

    def admits(self, projected_bytes: int, reason: str = "") -> bool:
        """Whether features of ``projected_bytes`` (the expected total) may be stored.

        On a refusal the pass goes on computing, the current key is marked so that later passes
        compute too, and the first refusal of this cache warns once.

        Args:
            projected_bytes: The expected size of the complete features.
            reason: Appended to the message (how the size was projected).
        """
        if projected_bytes <= self.limit_bytes:
            return True
        self._refused = self._key
        self._complete = False
        self.stats.size_bytes = 0
        message = (
            f"feature cache: the features at the cut {self.stats.cut!r} need about "
            f"{format_bytes(projected_bytes)}, over the limit of {format_bytes(self.limit_bytes)}"
            f"{reason}; computing the frozen part every pass instead (raise max_gb/max_bytes, "
            "store float16, or use a directory for a memory-mapped file)"
        )
        self.stats.fallback = message
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return False

    def fits_on_accelerator(self, projected_bytes: int | None, free_bytes: int) -> bool:
        """Whether features of ``projected_bytes`` (``None``: size unknown) may be kept on an
        accelerator with ``free_bytes`` free: known, within the limit and within
        :data:`ACCELERATOR_SHARE` of the free memory."""
        return (
            projected_bytes is not None
            and projected_bytes <= self.limit_bytes
            and projected_bytes <= ACCELERATOR_SHARE * free_bytes
        )

    def end_build(self, size_bytes: int) -> None:
        """The build pass stored all features (``size_bytes`` in total)."""
        self._complete = True
        self.stats.builds += 1
        self.stats.size_bytes = size_bytes

    def record_miss(self, seconds: float = 0.0) -> None:
        """One batch's frozen part was computed; ``seconds`` it took while building."""
        self.stats.misses += 1
        self.stats.build_seconds += seconds

    def record_hit(self, seconds_saved: float) -> None:
        """One batch was served, saving ``seconds_saved`` against computing it."""
        self.stats.hits += 1
        self.stats.seconds_saved += seconds_saved


def check_source(data: object, directory: object, examples: str) -> Path | None:
    """Check a cache's data and folder before anything is built.

    Args:
        data: What the cache reads each pass; it must be re-iterable.
        directory: ``None`` or an existing folder for memory-mapped features.
        examples: The kinds of data the framework accepts, for the message.

    Returns:
        ``directory`` as a ``Path``, or ``None``.

    Raises:
        TypeError: ``data`` is not iterable or is a one-shot iterator, or ``directory`` is
            not a path.
        ValueError: ``directory`` is not an existing folder.
    """
    if not isinstance(data, Iterable) or iter(data) is data:
        raise TypeError(
            f"data must be re-iterable ({examples}), not a one-shot iterator, a generator or "
            f"a {type(data).__name__}: it is read again after every unfreeze"
        )
    if directory is None:
        return None
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            "directory must be None or the path of a folder (str or os.PathLike), got "
            f"{type(directory).__name__}: {directory!r}"
        )
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"directory {str(directory)!r} is not an existing folder")
    return folder

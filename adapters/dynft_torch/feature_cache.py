"""``FeatureCache``: the frozen part of the backbone computed once per trainable set.

While the deepest groups train, everything below them is frozen and (with frozen BatchNorm)
a fixed function of the input. For un-augmented data (validation, test, training samples that
are not randomly augmented) its output is computed once, kept, and only the trainable rest runs
in later passes. The cache follows the tuner: after an unfreeze it moves the cut and rebuilds.

Frozen means inference mode: while the cache exists, every module that runs entirely inside the
frozen region runs in eval mode (dropout, stochastic depth off), whether a batch is served from
the cache or computed (also by a plain ``model(x)``), so both give the same result.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from dynft_core.feature_cache import (
    CacheAction,
    FeatureCachePolicy,
    FeatureCacheStats,
    batch_count,
    check_source,
    resolve_limit,
)

from .distributed import world_size
from .feature_store import STORAGES, FeatureStore, free_accelerator_bytes, tensor_bytes
from .frozen_prefix import FrozenPrefix, module_modes, plan_cut
from .frozen_region import CutError, ForwardRecord, frozen_region, record_forward
from .inference_region import InferenceRegion

STORAGE_DTYPES = (None, torch.float16, torch.bfloat16)
PROBE_SIZE = 4


def _split(batch: object) -> tuple[torch.Tensor, tuple[object, ...]]:
    if isinstance(batch, torch.Tensor):
        return batch, ()
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], tuple(batch[1:])
    raise TypeError(
        "each batch must be a tensor of model inputs or a tuple/list whose first item is that "
        f"tensor (e.g. (images, labels)), got {type(batch).__name__}"
    )


def _to(item: object, device: torch.device, copy: bool = False) -> object:
    if isinstance(item, torch.Tensor):
        return item.to(device, non_blocking=True, copy=copy)
    return item


class CachedModel(nn.Module):
    """The model applied to what :meth:`FeatureCache.batches` yields (features or inputs).

    Its parameters, ``train()`` and ``eval()`` are the model's own.
    """

    def __init__(self, cache: FeatureCache) -> None:
        super().__init__()
        self.inner = cache.model_of_tuner
        self._cache: FeatureCache = cache

    def forward(self, x: torch.Tensor) -> Any:
        return self._cache._forward(x)


class FeatureCache:
    """Serves the output of the frozen groups from a cache and runs only the trainable rest.

    Usage (one cache per un-augmented dataset)::

        cache = FeatureCache(tuner, val_loader, max_gb=2)
        with torch.no_grad():
            for x, y in cache.batches():        # features at the cut (or inputs, see below)
                loss += criterion(cache.model(x), y)

    ``cache.model(x)`` equals ``model(inputs)`` bit for bit on deterministic kernels. The first
    pass after construction or after an unfreeze builds the features (that pass costs one plain
    forward); later passes serve them. When the features do not fit ``max_bytes``/``max_gb``
    (one warning) they are computed again every pass. When nothing is frozen, or no valid cut
    exists after an unfreeze (one warning), batches yield the inputs and ``cache.model`` runs
    the whole model.

    Args:
        tuner: The :class:`~dynft_torch.DynamicFineTuner` (its ``model``, ``groups`` and
            ``scheduler.num_unfrozen`` are read; any object with these fields works, e.g. for a
            fixed top-n with groups from :func:`~dynft_torch.resolve_groups`).
        data: Re-iterable batches of un-augmented inputs, the same every pass: a ``DataLoader``
            without shuffling, a list of ``(inputs, targets)`` ... Tensors are moved to the
            model's device.
        max_bytes: Memory limit for the stored features (and the other batch items).
        max_gb: The limit in GiB (give at most one of the two). Default: half the memory
            available now (of the free disk space with ``directory``).
        dtype: Storage dtype, ``torch.float16`` or ``torch.bfloat16`` to halve the memory
            (served features are then rounded, no longer bit-exact). Defaults to ``None``.
        directory: Keep the features in a memory-mapped file in this folder (deleted by
            :meth:`close`). Defaults to ``None`` (memory).
        storage: ``"host"`` (default) or ``"auto"``: on the model's accelerator when all
            features fit in a quarter of its free memory.

    Raises:
        TypeError: ``tuner`` is not a tuner, or ``data`` is a one-shot iterator or has
            batches of another structure.
        ValueError: Bad limit, dtype or storage, a shuffling ``DataLoader``, or empty data.
        CutError: The model cannot be cut between its frozen and its trainable part (skip
            connections or parallel branches across the cut, groups out of forward order).
    """

    def __init__(
        self,
        tuner: Any,
        data: Iterable[Any],
        *,
        max_bytes: int | None = None,
        max_gb: float | None = None,
        dtype: torch.dtype | None = None,
        directory: str | Path | None = None,
        storage: str = "host",
    ) -> None:
        for attribute in ("model", "groups", "scheduler"):
            if not hasattr(tuner, attribute):
                raise TypeError(f"tuner must be a DynamicFineTuner, got {type(tuner).__name__}")
        directory_path = check_source(data, directory, "a DataLoader, a list of batches ...")
        if isinstance(data, DataLoader) and (
            isinstance(data.sampler, RandomSampler)
            or isinstance(getattr(data.batch_sampler, "sampler", None), RandomSampler)
        ):
            raise ValueError(
                "data is a shuffling DataLoader; the cache needs the same batches every pass "
                "(shuffle=False)"
            )
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.directory = directory_path
        self.tuner = tuner
        self.data = data
        self.dtype = dtype
        self.storage = storage
        self._policy = FeatureCachePolicy(resolve_limit(max_bytes, max_gb, self.directory))
        self.model_of_tuner: nn.Module = tuner.model
        self.device = next(self.model_of_tuner.parameters()).device
        first = next(iter(data), None)
        if first is None:
            raise ValueError("data yields no batch")
        probe, _ = _split(first)
        self._probe = probe[:PROBE_SIZE].to(self.device, copy=True)
        with torch.no_grad(), module_modes(self.model_of_tuner, False):
            self._record: ForwardRecord = record_forward(self.model_of_tuner, self._probe)[0]
        self._planned_for = -1
        self._plan: FrozenPrefix | None = None
        self._warned_cut = False
        self._store = FeatureStore(None, None, torch.device("cpu"), False)
        self._build_seconds: list[float] = []
        self._generation = 0
        self._closed = False
        self._region = InferenceRegion(
            self.model_of_tuner, self._record, tuner.groups, self._num_frozen
        )
        try:
            self._plan_for(self._num_frozen(), raise_errors=True)
        except BaseException:
            self.close()  # a failed construction leaves the model as it was
            raise
        self.model = CachedModel(self)

    # -- the frozen region ------------------------------------------------------------------

    def _num_frozen(self) -> int:
        return len(self.tuner.groups) - int(self.tuner.scheduler.num_unfrozen)

    def _plan_for(self, num_frozen: int, raise_errors: bool) -> None:
        self._region.sync()
        if self._planned_for == num_frozen:
            return
        self._planned_for, self._plan, self._cut_error = num_frozen, None, ""
        self._policy.stats.cut = None
        if not num_frozen:
            return
        try:
            region = frozen_region(self.model_of_tuner, self._record, self.tuner.groups, num_frozen)
            plan = plan_cut(self.model_of_tuner, self._record, region, self._probe)
        except CutError as error:
            if raise_errors:
                raise
            self._cut_error = str(error)
            if not self._warned_cut:
                self._warned_cut = True
                warnings.warn(f"feature cache disabled: {error}", RuntimeWarning, stacklevel=4)
            return
        self._plan = plan
        self._generation += 1
        self._policy.stats.cut = plan.cut_name

    def _fingerprint(self) -> tuple[tuple[int, int, int], ...]:
        frozen = [
            name
            for group in self.tuner.groups[: self._num_frozen()]
            for name in group.parameter_names
        ]
        parameters = dict(self.model_of_tuner.named_parameters())
        tensors = [parameters[name] for name in frozen]
        modules = dict(self.model_of_tuner.named_modules())
        tensors += [
            b for name in sorted(self._region.modules) for b in modules[name].buffers(recurse=False)
        ]
        for name in frozen:
            if parameters[name].requires_grad:
                raise RuntimeError(
                    f"parameter {name!r} of a frozen group requires grad: the cache serves "
                    "features of frozen weights; freeze and unfreeze only through the tuner"
                )
        return tuple((id(t), t.data_ptr(), t._version) for t in tensors)

    # -- passes -----------------------------------------------------------------------------

    @property
    def stats(self) -> FeatureCacheStats:
        """Hit rate, size and time saved: a :class:`~dynft_core.feature_cache.FeatureCacheStats`."""
        return self._policy.stats

    @property
    def cut(self) -> str | None:
        """Name of the module after which the model is cut now, ``None`` when not cutting."""
        self._plan_for(self._num_frozen(), raise_errors=False)
        return self._plan.cut_name if self._plan is not None else None

    def batches(self) -> Iterator[tuple[Any, ...]]:
        """One pass: ``(x, *rest_of_batch)`` per batch, tensors on the model's device.

        ``x`` is the features at the cut (the inputs when nothing is cut); pass it
        to :attr:`model`. Refreshes first if the trainable set or a frozen tensor changed.

        Raises:
            RuntimeError: The trainable set changed in the middle of the pass.
        """
        self._check_open()
        if next(self.model_of_tuner.parameters()).device != self.device:
            raise RuntimeError(
                f"the model moved from {self.device} since the cache was created; create a new "
                "FeatureCache after moving the model"
            )
        num_frozen = self._num_frozen()
        self._plan_for(num_frozen, raise_errors=False)
        key = (num_frozen, self._fingerprint()) if self._plan is not None else None
        action = self._policy.begin_pass(key, self._why_not(num_frozen))
        if action is not CacheAction.SERVE:
            self._store.clear()
        if action is CacheAction.SERVE:
            yield from self._serve(num_frozen)
        elif action is CacheAction.BUILD:
            yield from self._build(num_frozen)
        else:
            for batch in self.data:
                inputs, others = _split(batch)
                inputs = inputs.to(self.device)
                self._policy.record_miss()
                if self._plan is not None:  # over the limit: features computed, not kept
                    with torch.no_grad():
                        inputs = self._tagged(self._plan.features(inputs))
                yield (inputs, *(_to(item, self.device) for item in others))

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The features at the current cut of ``inputs``, computed now and not stored.

        For samples that cannot be served (randomly augmented ones): their features and served
        ones can be stacked into one batch for :attr:`model`. When nothing is cut, the inputs
        (moved to the model's device) are returned, as :meth:`batches` yields them.
        """
        self._check_open()
        self._plan_for(self._num_frozen(), raise_errors=False)
        inputs = inputs.to(self.device)
        if self._plan is None:
            return inputs
        with torch.no_grad():
            return self._tagged(self._plan.features(inputs))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this FeatureCache is closed; create a new one")

    def _why_not(self, num_frozen: int) -> str:
        if not num_frozen:
            return "nothing is frozen"
        return self._cut_error or "no module below the unfrozen groups can be cut off"

    def _check_unchanged(self, num_frozen: int) -> None:
        if self._num_frozen() != num_frozen:
            raise RuntimeError("the trainable set changed during a pass over the feature cache")

    def _serve(self, num_frozen: int) -> Iterator[tuple[Any, ...]]:
        assert self._plan is not None
        dtype = self._plan.feature_dtype
        for index, (features, others) in enumerate(
            zip(self._store.features, self._store.others, strict=True)
        ):
            self._check_unchanged(num_frozen)
            start = time.perf_counter()
            served = self._tagged(
                features.to(self.device, dtype=dtype, non_blocking=True, copy=True)
            )
            moved = tuple(_to(item, self.device, copy=True) for item in others)
            self._policy.record_hit(self._build_seconds[index] - (time.perf_counter() - start))
            yield (served, *moved)

    def _build(self, num_frozen: int) -> Iterator[tuple[Any, ...]]:
        assert self._plan is not None
        length = batch_count(self.data)
        self._build_seconds = []
        storing = True
        for index, batch in enumerate(self.data):
            self._check_unchanged(num_frozen)
            inputs, others = _split(batch)
            inputs = inputs.to(self.device)
            moved = tuple(_to(item, self.device) for item in others)
            start = time.perf_counter()
            with torch.no_grad():
                features = self._plan.features(inputs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            self._policy.record_miss(seconds)
            if storing and index == 0:
                self._store = FeatureStore(
                    self.dtype,
                    self.directory,
                    self._placement(features, others, length),
                    self.device.type == "cuda",
                )
            if storing:
                self._store.append(features, others)
                self._build_seconds.append(seconds)
                batches = len(self._store)
                projected = self._store.nbytes * (length or batches) // batches
                how = f" (projected from {batches} of {length} batches)" if length else ""
                if not self._policy.admits(max(projected, self._store.nbytes), how):
                    storing = False
                    self._store.clear()
            if self.dtype is not None:
                features = features.to(self.dtype).to(features.dtype)
            yield (self._tagged(features), *moved)
        if storing:
            self._store.finish()
            self._policy.end_build(self._store.nbytes)

    def _tagged(self, features: torch.Tensor) -> torch.Tensor:
        features._dynft_cut_generation = self._generation  # type: ignore[attr-defined]
        return features

    def _placement(
        self, features: torch.Tensor, others: tuple[object, ...], length: int | None
    ) -> torch.device:
        if self.storage != "auto" or self.device.type != "cuda" or self.directory is not None:
            return torch.device("cpu")
        per_batch = features.numel() * (self.dtype or features.dtype).itemsize
        projected = None if length is None else (per_batch + tensor_bytes(others)) * length
        fits = self._policy.fits_on_accelerator(projected, free_accelerator_bytes(self.device))
        return self.device if fits else torch.device("cpu")

    def _forward(self, x: torch.Tensor) -> Any:
        self._check_open()
        self._plan_for(self._num_frozen(), raise_errors=False)
        if self._plan is None:
            return self.model_of_tuner(x)
        if getattr(x, "_dynft_cut_generation", self._generation) != self._generation:
            raise RuntimeError(
                "these features were served before the cut moved (an unfreeze since); take "
                "the batches of a new cache.batches() pass"
            )
        if tuple(x.shape[1:]) != self._plan.feature_shape:
            raise ValueError(
                f"cache.model expects what cache.batches() yields: features of shape "
                f"(B, {', '.join(map(str, self._plan.feature_shape))}) at {self._plan.cut_name!r}, "
                f"got {tuple(x.shape)}"
            )
        if torch.is_grad_enabled() and world_size() > 1:
            raise RuntimeError(
                "cache.model calls the model inside DistributedDataParallel, so gradients "
                "through it are not averaged across ranks; train through DDP without the cache "
                "(evaluation under torch.no_grad() is fine)"
            )
        return self._plan.rest(x)

    def close(self) -> None:
        """Drop the features (and the file) and stop holding the frozen region in eval mode."""
        self._store.clear()
        self._region.remove()
        self._plan, self._closed = None, True

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""``FeatureCache``: the frozen part of a Keras backbone computed once per trainable set.

While the deepest groups train, every layer below them is frozen and (with frozen
BatchNormalization) a fixed function of the input. For un-augmented data (validation, test,
training samples without random augmentation) its output is computed once, kept in host memory,
and only the trainable rest runs in later passes. The cache follows the callback's scheduler:
after an unfreeze it moves the cut and rebuilds.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from dynft_core.feature_cache import (
    CacheAction,
    FeatureCachePolicy,
    FeatureCacheStats,
    batch_count,
    check_source,
    resolve_limit,
)

from .frozen_prefix import CutError, FrozenPrefix, nested_base, shared_plan

STORAGE_DTYPES = (None, "float16")
PROBE_SIZE = 4


def _numpy(item: Any) -> Any:
    if isinstance(item, np.ndarray) or np.isscalar(item) or item is None:
        return item
    return keras.ops.convert_to_numpy(item)


def _split(batch: Any) -> tuple[np.ndarray, tuple[Any, ...]]:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise TypeError("a batch is an empty tuple; expected (inputs, ...) or inputs")
        items = [_numpy(item) for item in batch]
        return items[0], tuple(items[1:])
    if isinstance(batch, dict):
        raise TypeError(
            "each batch must be model inputs or a tuple (inputs, targets, ...), not a dict"
        )
    return _numpy(batch), ()


class _Store:
    """Batches of features and the other batch items, in memory or in a memory-mapped file."""

    def __init__(self, dtype: str | None, directory: Path | None) -> None:
        self.dtype, self.directory = dtype, directory
        self.features: list[np.ndarray] = []
        self.others: list[tuple[Any, ...]] = []
        self.nbytes = 0
        self._file: Path | None = None
        self._handle: Any = None
        self._shapes: list[tuple[int, ...]] = []

    def append(self, features: np.ndarray, others: tuple[Any, ...]) -> None:
        kept = features.astype(self.dtype or features.dtype, copy=True)
        kept.flags.writeable = False
        others = tuple(np.array(item, copy=True) for item in others)
        self.others.append(others)
        self.nbytes += kept.nbytes + sum(item.nbytes for item in others)
        if self.directory is None:
            self.features.append(kept)
            return
        if self._handle is None:
            descriptor, name = tempfile.mkstemp(suffix=".features", dir=self.directory)
            self._file, self._handle = Path(name), os.fdopen(descriptor, "wb")
        self._handle.write(np.ascontiguousarray(kept).tobytes())
        self._shapes.append(kept.shape)
        self._dtype = kept.dtype

    def finish(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        flat = np.memmap(self._file, dtype=self._dtype, mode="r")
        offset = 0
        for shape in self._shapes:
            size = int(np.prod(shape))
            self.features.append(flat[offset : offset + size].reshape(shape))
            offset += size

    def clear(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.features, self.others, self._shapes, self.nbytes = [], [], [], 0
        if self._file is not None:
            self._file.unlink(missing_ok=True)
            self._file = None


class FeatureCache:
    """Serves the output of the frozen groups from a cache and runs only the trainable rest.

    Usage (one cache per un-augmented dataset)::

        cache = FeatureCache(callback, val_batches, model=model, max_gb=2)
        for x, y in cache.batches():            # features at the cut (or inputs, see below)
            probabilities = cache.model.predict_on_batch(x)

    :attr:`model` is the rest of the model after the current cut; read it again after every
    unfreeze (the cut moves, and it is a new model). The first pass after construction or after
    an unfreeze builds the features (it costs about one plain forward); later passes serve them.
    When the features do not fit ``max_bytes``/``max_gb`` (one warning) they are computed again
    every pass. When nothing is frozen, or no valid cut exists after an unfreeze (one warning),
    batches yield the inputs and :attr:`model` is the whole model. The frozen part always runs
    in inference mode through the cache.

    Args:
        callback: The :class:`~dynft_keras.DynamicFineTuning` (its ``backbone``, ``groups`` and
            ``scheduler`` are read; no scheduler yet means nothing unfrozen yet).
        data: Re-iterable batches of un-augmented inputs, the same every pass: a list of
            ``(inputs, targets)`` arrays, a ``keras.utils.PyDataset``, a ``tf.data.Dataset``...
        model: The functional (or Sequential) model holding the backbone. Defaults to
            ``callback.model`` (set by ``fit``).
        max_bytes: Memory limit for the stored features (and the other batch items).
        max_gb: The limit in GiB (give at most one of the two). Default: half the memory
            available now (of the free disk space with ``directory``).
        dtype: ``"float16"`` to store half-precision features (served features are then
            rounded, no longer bit-exact). Defaults to ``None`` (the features' own dtype).
        directory: Keep the features in a memory-mapped file in this folder (deleted by
            :meth:`close`). Defaults to ``None`` (memory).

    Raises:
        TypeError: Bad callback or batch structure, or one-shot ``data``.
        ValueError: No model, bad limit or dtype, empty data.
        CutError: The model cannot be cut between its frozen and its trainable part.
    """

    def __init__(
        self,
        callback: Any,
        data: Iterable[Any],
        *,
        model: keras.Model | None = None,
        max_bytes: int | None = None,
        max_gb: float | None = None,
        dtype: str | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        for attribute in ("backbone", "groups", "scheduler"):
            if not hasattr(callback, attribute):
                raise TypeError(
                    f"callback must be a DynamicFineTuning, got {type(callback).__name__}"
                )
        model = model if model is not None else callback.model
        if model is None:
            raise ValueError("pass model=: the callback has no model until fit starts")
        if callback.groups is None:  # a backbone given as layer names is looked up in the model
            callback.set_model(model)
        directory_path = check_source(
            data, directory, "a list of batches, a PyDataset, a tf.data.Dataset"
        )
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
        self.directory = directory_path
        self.callback, self.data, self.dtype = callback, data, dtype
        self.full_model = model
        self._policy = FeatureCachePolicy(resolve_limit(max_bytes, max_gb, self.directory))
        first = next(iter(data), None)
        if first is None:
            raise ValueError("data yields no batch")
        self._probe = np.array(_split(first)[0][:PROBE_SIZE], copy=True)
        self._store = _Store(None, None)
        self._plan: FrozenPrefix | None = None
        self._planned_for = -1
        self._warned: set[str] = set()
        self._build_seconds: list[float] = []
        self._closed = False
        self._plan_for(self._num_frozen(), raise_errors=True)

    def _num_frozen(self) -> int:
        scheduler = self.callback.scheduler
        return len(self.callback.groups) - (scheduler.num_unfrozen if scheduler else 0)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _plan_for(self, num_frozen: int, raise_errors: bool) -> None:
        if num_frozen == self._planned_for:
            return
        self._planned_for, self._plan, self._cut_error = num_frozen, None, ""
        self._policy.stats.cut = None
        if not num_frozen:
            return
        try:
            plan = shared_plan(
                self.full_model,
                nested_base(self.callback.backbone),
                self.callback.groups,
                num_frozen,
                self._probe,
            )
        except CutError as error:
            if raise_errors:
                raise
            self._cut_error = str(error)
            self._warn_once(f"feature cache disabled: {error}")
            return
        if plan is None:
            return
        if plan.inference_layers:
            self._warn_once(
                f"feature cache: layers {plan.inference_layers[:5]} of the frozen part depend on "
                "training; the cache always runs them in inference mode (frozen means "
                "inference), while a plain fit of the model runs them in training mode"
            )
        self._plan = plan
        self._policy.stats.cut = plan.cut_name

    @property
    def stats(self) -> FeatureCacheStats:
        """Hit rate, size and time saved: a :class:`~dynft_core.feature_cache.FeatureCacheStats`."""
        return self._policy.stats

    @property
    def cut(self) -> str | None:
        """Name of the layer after which the model is cut now, ``None`` when not cutting."""
        self._plan_for(self._num_frozen(), raise_errors=False)
        return self._plan.cut_name if self._plan is not None else None

    @property
    def model(self) -> keras.Model:
        """The model to apply to what :meth:`batches` yields: the rest after the cut.

        A new model after every unfreeze that moves the cut (compile it again to train it);
        the whole model when nothing is cut.
        """
        self._plan_for(self._num_frozen(), raise_errors=False)
        return self._plan.rest if self._plan is not None else self.full_model

    def batches(self) -> Iterator[tuple[Any, ...]]:
        """One pass: ``(x, *rest_of_batch)`` per batch, as NumPy arrays.

        ``x`` is the features at the cut (the inputs when nothing is cut); apply
        :attr:`model` to it. Refreshes first if the trainable set or a frozen weight changed.

        Raises:
            RuntimeError: The trainable set changed in the middle of the pass.
        """
        if self._closed:
            raise RuntimeError("this FeatureCache is closed; create a new one")
        sync = getattr(self.full_model, "jax_state_sync", None)
        if callable(sync):  # inside a JAX fit the variables hold the last synced state
            sync()
        num_frozen = self._num_frozen()
        self._plan_for(num_frozen, raise_errors=False)
        key = (num_frozen, self._plan.fingerprint()) if self._plan is not None else None
        action = self._policy.begin_pass(key, self._why_not(num_frozen))
        if action is not CacheAction.SERVE:
            self._store.clear()
        if action is CacheAction.SERVE:
            for index, features in enumerate(self._store.features):
                self._check_unchanged(num_frozen)
                start = time.perf_counter()
                served = features.astype(self._feature_dtype) if self.dtype else features
                others = self._store.others[index]
                self._policy.record_hit(self._build_seconds[index] - (time.perf_counter() - start))
                yield (served, *others)
        elif action is CacheAction.BUILD:
            yield from self._build(num_frozen)
        else:
            for batch in self.data:
                inputs, others = _split(batch)
                self._policy.record_miss()
                if self._plan is not None:  # over the limit: features computed, not kept
                    inputs = self._features(inputs)
                yield (inputs, *others)

    def _why_not(self, num_frozen: int) -> str:
        if not num_frozen:
            return "nothing is frozen"
        return self._cut_error or "no layer below the unfrozen groups can be cut off"

    def _check_unchanged(self, num_frozen: int) -> None:
        if self._num_frozen() != num_frozen:
            raise RuntimeError("the trainable set changed during a pass over the feature cache")

    def features(self, inputs: Any) -> np.ndarray:
        """The features at the current cut of ``inputs``, computed now and not stored.

        For samples that cannot be served (randomly augmented ones): their features and served
        ones can be stacked into one batch for :attr:`model`. When nothing is cut, the inputs
        are returned, as :meth:`batches` yields them.
        """
        if self._closed:
            raise RuntimeError("this FeatureCache is closed; create a new one")
        self._plan_for(self._num_frozen(), raise_errors=False)
        inputs = _numpy(inputs)
        return inputs if self._plan is None else self._features(inputs)

    def _features(self, inputs: np.ndarray) -> np.ndarray:
        assert self._plan is not None
        return keras.ops.convert_to_numpy(self._plan.prefix.predict_on_batch(inputs))

    def _build(self, num_frozen: int) -> Iterator[tuple[Any, ...]]:
        assert self._plan is not None
        length = batch_count(self.data)
        self._store = _Store(self.dtype, self.directory)
        self._build_seconds = []
        storing = True
        for batch in self.data:
            self._check_unchanged(num_frozen)
            inputs, others = _split(batch)
            start = time.perf_counter()
            features = self._features(inputs)
            seconds = time.perf_counter() - start
            self._policy.record_miss(seconds)
            self._feature_dtype = features.dtype
            if storing:
                self._store.append(features, others)
                self._build_seconds.append(seconds)
                count = len(self._store.others)
                projected = self._store.nbytes * (length or count) // count
                how = f" (projected from {count} of {length} batches)" if length else ""
                if not self._policy.admits(max(projected, self._store.nbytes), how):
                    storing = False
                    self._store.clear()
            if self.dtype is not None:
                features = features.astype(self.dtype).astype(features.dtype)
            yield (features, *others)
        if storing:
            self._store.finish()
            self._policy.end_build(self._store.nbytes)

    def predict(self) -> np.ndarray:
        """The model's outputs (inference mode) for every sample of ``data``, in order."""
        outputs = [
            keras.ops.convert_to_numpy(self.model.predict_on_batch(x)) for x, *_ in self.batches()
        ]
        return np.concatenate(outputs)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (:attr:`model` is then the whole model)."""
        return self._closed

    def close(self) -> None:
        """Drop the features (and the file)."""
        self._store.clear()
        self._plan, self._closed = None, True

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

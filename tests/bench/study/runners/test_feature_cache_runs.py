"""The study's feature-cache settings, figures and report section, framework-free."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.study.data.batches import SplitArrays, TrainingData
from benchmarks.study.results.cache_section import feature_cache_section
from benchmarks.study.runners.feature_cache_runs import (
    RECORD_FIELDS,
    CacheFigures,
    split_limits,
)
from dynft_core.feature_cache import GIB, FeatureCacheStats


def test_the_limit_is_shared_by_image_count_and_never_exceeded():
    limits = split_limits(2.0, {"validation": 100, "training": 300})
    assert limits == {"validation": GIB // 2, "training": 3 * GIB // 2}
    assert sum(split_limits(1e-9, {"a": 1, "b": 2}).values()) <= 3  # at least a byte each
    with pytest.raises(ValueError, match="max_gb must be a positive finite number, got -1"):
        split_limits(-1, {"validation": 1})


def test_the_record_sums_hits_keeps_the_largest_size_and_the_detail():
    figures = CacheFigures("auto")
    validation = FeatureCacheStats(hits=3, misses=1, size_bytes=2_000_000, seconds_saved=1.5)
    training = FeatureCacheStats(hits=1, misses=3, size_bytes=1_000_000, seconds_saved=0.5)
    figures.observe({"validation": validation, "training": training})
    validation.size_bytes = training.size_bytes = 10  # live stats: a new trainable set, smaller
    figures.observe({"validation": validation, "training": training})
    record = figures.record()
    assert set(RECORD_FIELDS) <= set(record)
    assert record["feature_cache"] == "auto"
    assert record["cache_size_mb"] == pytest.approx(3.0)  # the largest total seen
    assert record["cache_hit_rate"] == pytest.approx(4 / 8)
    assert record["cache_saved_s"] == pytest.approx(2.0)
    assert record["feature_cache_detail"]["training"]["hits"] == 1
    off = CacheFigures("off").record()
    assert off["cache_hit_rate"] == 0.0 and off["feature_cache_detail"] == {}


def _data(augment: bool) -> TrainingData:
    images = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    split = SplitArrays(images, np.array([0, 0, 0, 0, 1, 1]))
    return TrainingData(split, split, split, 2, 4, seed=0, balance="none", augment=augment)


def test_only_the_minority_samples_are_augmented_and_none_without_augmentation():
    data = _data(True)
    labels = np.array([0, 1, 1, 0])
    np.testing.assert_array_equal(data.augmented(labels), [False, True, True, False])
    images, _, _ = data.train_batch(np.array([0, 4]))
    np.testing.assert_array_equal(images[0], data.plain_train_images(np.array([0]))[0])
    assert not np.array_equal(images[1], data.plain_train_images(np.array([4]))[0])
    plain = _data(False)
    assert not plain.augmented(labels).any()
    images, _, _ = plain.train_batch(np.array([0, 4]))
    np.testing.assert_array_equal(images, plain.plain_train_images(np.array([0, 4])))


def test_the_report_section_lists_each_run_and_its_fallback():
    run = {
        "backbone": "b", "strategy": "dynamic", "seed": 0, "wall_s": 12.0,
        "feature_cache": "auto", "cache_hit_rate": 0.75, "cache_size_mb": 1.5,
        "cache_saved_s": 3.25,
        "feature_cache_detail": {"validation": {"fallback": "feature cache: over the limit"}},
    }  # fmt: skip
    lines = feature_cache_section([run, {**run, "feature_cache": "off", "strategy": "full"}])
    assert lines[0] == "## Feature cache"
    assert (
        "| b | dynamic | 0 | auto | 75.0 | 1.50 | 3.2 | 12.0 | feature cache: over the limit |"
        in lines
    )
    assert feature_cache_section([{"backbone": "b"}]) == []

"""dynft_core.feature_cache: serve / build / compute decisions, the memory limit, the figures."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynft_core.feature_cache import (
    GIB,
    CacheAction,
    FeatureCachePolicy,
    batch_count,
    format_bytes,
    free_memory_bytes,
    resolve_limit,
)


def test_a_key_is_built_once_then_served_and_a_new_key_builds_again():
    policy = FeatureCachePolicy(limit_bytes=1000)
    assert policy.begin_pass((3, "a")) is CacheAction.BUILD
    policy.end_build(400)
    assert policy.stats.size_bytes == 400
    assert policy.begin_pass((3, "a")) is CacheAction.SERVE
    assert policy.begin_pass((2, "a")) is CacheAction.BUILD  # an unfreeze
    assert policy.stats.size_bytes == 0  # the old features are dropped
    policy.end_build(300)
    assert policy.begin_pass((2, "a")) is CacheAction.SERVE
    assert policy.stats.builds == 2


def test_an_interrupted_build_is_built_again():
    policy = FeatureCachePolicy(limit_bytes=1000)
    assert policy.begin_pass("k") is CacheAction.BUILD
    assert policy.begin_pass("k") is CacheAction.BUILD  # end_build never came


def test_nothing_frozen_computes_and_says_why():
    policy = FeatureCachePolicy(limit_bytes=1000)
    policy.begin_pass("k")
    policy.end_build(10)
    assert policy.begin_pass(None) is CacheAction.COMPUTE
    assert policy.stats.fallback == "nothing is frozen" and policy.stats.size_bytes == 0
    assert policy.begin_pass("k") is CacheAction.BUILD


def test_over_the_limit_computes_for_that_key_with_one_warning_in_all():
    policy = FeatureCachePolicy(limit_bytes=1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert policy.begin_pass("a") is CacheAction.BUILD
        assert policy.admits(900)
        assert not policy.admits(1001, " (projected)")
        assert policy.begin_pass("a") is CacheAction.COMPUTE
        assert policy.begin_pass("b") is CacheAction.BUILD
        assert not policy.admits(5000)
        assert policy.begin_pass("b") is CacheAction.COMPUTE
    assert len(caught) == 1 and "over the limit" in str(caught[0].message)
    assert "(projected)" in str(caught[0].message)
    assert "over the limit" in policy.stats.fallback
    assert policy.stats.size_bytes == 0


def test_stats_hit_rate_and_time_saved():
    policy = FeatureCachePolicy(limit_bytes=10)
    assert policy.stats.hit_rate == 0.0
    policy.record_miss(0.5)
    policy.record_hit(0.4)
    policy.record_hit(0.3)
    stats = policy.stats.as_dict()
    assert stats["hits"] == 2 and stats["misses"] == 1
    assert stats["hit_rate"] == pytest.approx(2 / 3)
    assert stats["build_seconds"] == 0.5 and stats["seconds_saved"] == pytest.approx(0.7)


@given(st.integers(min_value=1, max_value=2**50))
def test_max_bytes_is_taken_as_given(limit):
    assert resolve_limit(limit, None) == limit


def test_limits_from_gib_and_the_defaults_half_of_what_is_free(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import dynft_core.feature_cache as module

    assert resolve_limit(None, 1.5) == int(1.5 * GIB)
    monkeypatch.setattr(module, "free_memory_bytes", lambda: 3000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 8000))
    assert resolve_limit(None, None) == 1500
    assert resolve_limit(None, None, tmp_path) == 4000
    assert format_bytes(3 * 2**20) == "3.0 MiB" and format_bytes(2 * GIB) == "2.00 GiB"


def test_free_memory_is_read_from_the_system():
    assert free_memory_bytes() > 0


@pytest.mark.parametrize(
    ("max_bytes", "max_gb", "match"),
    [
        (10, 1.0, "not both"),
        (0, None, "max_bytes must be a positive integer"),
        (True, None, "max_bytes must be a positive integer"),
        (1.5, None, "max_bytes must be a positive integer"),
        (None, 0, "max_gb must be a positive finite number"),
        (None, float("inf"), "max_gb must be a positive finite number"),
        (None, "2", "max_gb must be a positive finite number"),
    ],
)
def test_bad_limits_are_refused(max_bytes, max_gb, match):
    with pytest.raises(ValueError, match=match):
        resolve_limit(max_bytes, max_gb)


def test_features_go_to_the_accelerator_only_when_their_size_is_known_and_small():
    policy = FeatureCachePolicy(limit_bytes=1000)
    assert policy.fits_on_accelerator(250, free_bytes=1000)
    assert not policy.fits_on_accelerator(251, free_bytes=1000)  # over a quarter of the free
    assert not policy.fits_on_accelerator(None, free_bytes=10**12)  # unknown size
    assert not policy.fits_on_accelerator(1001, free_bytes=10**12)  # over the limit


def test_batch_count_of_sized_and_unsized_data():
    assert batch_count([1, 2, 3]) == 3
    assert batch_count(x for x in range(3)) is None


def test_check_source_refuses_what_cannot_be_read_again_or_is_no_folder(tmp_path):
    from dynft_core.feature_cache import check_source

    assert check_source([1, 2], None, "lists") is None
    assert check_source([1], str(tmp_path), "lists") == tmp_path
    for data in (3, iter([1]), (x for x in [1])):
        with pytest.raises(TypeError, match=r"data must be re-iterable \(lists\)"):
            check_source(data, None, "lists")
    with pytest.raises(TypeError, match=r"directory must be None or the path .* got int: 3"):
        check_source([1], 3, "lists")
    with pytest.raises(ValueError, match="is not an existing folder"):
        check_source([1], tmp_path / "missing", "lists")

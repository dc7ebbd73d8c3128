"""FeatureCache with a real tuner: exact outputs, training through it, refresh, memory, stats."""

from __future__ import annotations

import warnings

import pytest
import torch
from dynft_torch import DynamicFineTuner, FeatureCache
from tiny_models import TinyNet, make_data, state_copy
from torch import nn


class DropoutNet(TinyNet):
    """TinyNet with dropout inside every backbone block and before the head."""

    def __init__(self) -> None:
        super().__init__()
        for block in self.backbone:
            block.append(nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 3))


def batches_of(data, size=16):
    images, labels = data
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def setup(model_class=TinyNet, seed=0, **tuner_options):
    torch.manual_seed(seed)
    model = model_class()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    options = {"patience": 1, "step": 1, "max_epochs": 30, **tuner_options}
    tuner = DynamicFineTuner(model, optimizer, backbone="backbone", **options)
    return model, optimizer, tuner


def plain_outputs(model, batches):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in batches])


def cached_outputs(cache):
    cache.model.eval()
    with torch.no_grad():
        return torch.cat([cache.model(x) for x, _ in cache.batches()])


def train_plain(model, optimizer, batches):
    model.train()
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def train_cached(cache, optimizer):
    cache.model.train()
    for x, y in cache.batches():
        optimizer.zero_grad()
        nn.functional.cross_entropy(cache.model(x), y).backward()
        optimizer.step()


def test_validation_through_the_cache_equals_the_plain_forward_over_a_whole_run():
    model, optimizer, tuner = setup()
    train, val = batches_of(make_data(48, seed=1)), batches_of(make_data(40, seed=2))
    cache = FeatureCache(tuner, val)
    cuts, values = [], [1.0, 0.9, 1.0, 0.8, 0.9, 0.95, 0.97, 0.7, 0.8, 0.9]
    for value in values:
        train_plain(model, optimizer, train)
        for _ in range(2):  # a build pass, then a pass served from the cache
            assert torch.equal(cached_outputs(cache), plain_outputs(model, val))
        cuts.append(cache.cut)
        if tuner.step(value).stop:
            break
    # the cut follows every unfreeze, and nothing is cut once every group trains
    assert cuts[:2] == ["backbone", "backbone"]
    assert {"backbone.2", "backbone.1", "backbone.0"} <= set(cuts)
    assert cuts[-1] is None
    assert cache.stats.builds == 4
    assert cache.stats.hits > 0 and 0 < cache.stats.hit_rate < 1


def test_training_through_the_cache_equals_plain_training_and_never_moves_frozen_weights():
    # The reference trains with plain model(x) calls; a cache exists for its tuner too, since
    # the cache's semantics (frozen dropout off) hold for every forward while it exists. Head
    # dropout draws random numbers: both runs must draw the same ones.
    data = batches_of(make_data(48, seed=3))
    plain_model, plain_optimizer, plain_tuner = setup(DropoutNet)
    cached_model, cached_optimizer, cached_tuner = setup(DropoutNet)
    FeatureCache(plain_tuner, data)
    cache = FeatureCache(cached_tuner, data)
    initial = state_copy(cached_model)
    values = [1.0, 1.1, 0.9, 1.0]  # misses at epochs 2 and 4 unfreeze backbone.3, backbone.2
    for epoch, value in enumerate(values):
        torch.manual_seed(100 + epoch)
        train_plain(plain_model, plain_optimizer, data)
        torch.manual_seed(100 + epoch)
        train_cached(cache, cached_optimizer)
        plain_state, cached_state = state_copy(plain_model), state_copy(cached_model)
        for name, tensor in plain_state.items():
            assert torch.equal(cached_state[name], tensor), f"{name} differs at epoch {epoch}"
        num_frozen = len(cached_tuner.groups) - cached_tuner.scheduler.num_unfrozen
        for group in cached_tuner.groups[:num_frozen]:
            for name in group.parameter_names:
                assert torch.equal(cached_state[name], initial[name]), f"frozen {name} moved"
        assert plain_tuner.step(value) == cached_tuner.step(value)
    assert cached_tuner.scheduler.num_unfrozen == 2
    assert (cache.stats.builds, cache.stats.hits, cache.stats.misses) == (2, 6, 6)
    plain_moments = [s["momentum_buffer"] for s in plain_optimizer.state.values()]
    cached_moments = [s["momentum_buffer"] for s in cached_optimizer.state.values()]
    assert len(plain_moments) == len(cached_moments) > 0
    for a, b in zip(plain_moments, cached_moments, strict=True):
        assert torch.equal(a, b)


def test_frozen_groups_run_in_inference_mode_cached_or_not_and_train_again_once_unfrozen():
    model, _, tuner = setup(DropoutNet)
    x, _ = make_data(8)
    model.train()
    with torch.no_grad():
        random_before = not torch.equal(model.backbone(x), model.backbone(x))
    cache = FeatureCache(tuner, [(x, torch.zeros(8, dtype=torch.long))])
    model.train()
    with torch.no_grad():
        assert torch.equal(model.backbone(x), model.backbone(x))  # plain forward, no cache
        model.eval()
        reference = model.backbone(x)
        model.train()
        assert torch.equal(model.backbone(x), reference)
    assert random_before
    tuner.step(1.0)
    tuner.step(2.0)  # unfreezes backbone.3: its dropout trains again
    model.train()
    block3 = model.backbone[3]
    with torch.no_grad():
        features = model.backbone[:3](x)
        assert torch.equal(model.backbone[:3](x), features)
        assert not torch.equal(block3(features), block3(features))
    cache.close()


class EvalBackboneNet(DropoutNet):
    """DropoutNet whose train() keeps the backbone in eval mode, as a study classifier does."""

    def train(self, mode: bool = True) -> EvalBackboneNet:
        super().train(mode)
        self.backbone.eval()
        return self


def test_modules_released_by_an_unfreeze_keep_the_mode_their_subtree_was_given():
    model, _, tuner = setup(EvalBackboneNet)
    x, _ = make_data(8)
    cache = FeatureCache(tuner, [(x, torch.zeros(8, dtype=torch.long))])
    tuner.step(1.0)
    tuner.step(2.0)  # unfreezes backbone.3, after the last train() call
    model.train()
    assert cache.cut is not None  # the region follows the tuner: backbone.3 is released
    block3 = model.backbone[3]
    assert not any(module.training for module in block3.modules())
    with torch.no_grad():
        features = model.backbone[:3](x)
        assert torch.equal(block3(features), block3(features))  # its dropout stays off
    assert model.head.training
    cache.close()


def test_a_frozen_weight_changed_from_outside_rebuilds_and_a_manual_unfreeze_is_refused():
    model, _, tuner = setup()
    val = batches_of(make_data(32, seed=4))
    cache = FeatureCache(tuner, val)
    cached_outputs(cache)
    cached_outputs(cache)
    assert cache.stats.builds == 1
    with torch.no_grad():
        model.backbone[0][0].weight.mul_(1.5)
    assert torch.equal(cached_outputs(cache), plain_outputs(model, val))
    assert cache.stats.builds == 2
    model.backbone[1][0].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"backbone\.1\.0\.weight.*requires grad"):
        next(cache.batches())


def test_a_change_of_the_trainable_set_in_the_middle_of_a_pass_is_an_error():
    _, _, tuner = setup()
    cache = FeatureCache(tuner, batches_of(make_data(48)))
    batches = cache.batches()
    next(batches)
    tuner.step(1.0)
    tuner.step(2.0)
    with pytest.raises(RuntimeError, match="changed during a pass"):
        next(batches)


def test_over_the_limit_it_recomputes_exactly_with_one_warning():
    model, _, tuner = setup()
    val = batches_of(make_data(40))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = FeatureCache(tuner, val, max_bytes=10_000)
        for _ in range(3):
            assert torch.equal(cached_outputs(cache), plain_outputs(model, val))
    messages = [str(w.message) for w in caught if "feature cache" in str(w.message)]
    assert len(messages) == 1 and "over the limit" in messages[0]
    assert cache.stats.hits == 0 and cache.stats.size_bytes == 0
    assert "over the limit" in cache.stats.fallback


def test_float16_and_memory_mapped_storage(tmp_path):
    model, _, tuner = setup()
    val = batches_of(make_data(40))
    expected = plain_outputs(model, val)
    full = FeatureCache(tuner, val)
    assert torch.equal(cached_outputs(full), expected)
    half = FeatureCache(tuner, val, dtype=torch.float16)
    first, second = cached_outputs(half), cached_outputs(half)
    assert torch.equal(first, second)  # the build pass serves the rounded features too
    assert (second - expected).abs().max() < 1e-2
    mapped = FeatureCache(tuner, val, directory=tmp_path)
    cached_outputs(mapped)
    assert len(list(tmp_path.iterdir())) == 1
    assert torch.equal(cached_outputs(mapped), expected)
    feature_bytes = 40 * 8 * 12 * 12 * 4
    label_bytes = 40 * 8
    assert full.stats.size_bytes == mapped.stats.size_bytes == feature_bytes + label_bytes
    assert half.stats.size_bytes == feature_bytes // 2 + label_bytes
    mapped.close()
    assert list(tmp_path.iterdir()) == []


def test_stats_count_hits_and_misses_and_estimate_the_time_saved():
    _, _, tuner = setup()
    cache = FeatureCache(tuner, batches_of(make_data(48)))
    for _ in range(3):
        cached_outputs(cache)
    stats = cache.stats
    assert (stats.misses, stats.hits, stats.builds) == (3, 6, 1)
    assert stats.hit_rate == pytest.approx(6 / 9)
    assert stats.build_seconds > 0 and stats.seconds_saved > 0
    assert stats.as_dict()["hit_rate"] == stats.hit_rate


def test_build_under_inference_mode_then_train_from_the_served_features():
    model, optimizer, tuner = setup()
    data = batches_of(make_data(32))
    cache = FeatureCache(tuner, data)
    with torch.inference_mode():
        list(cache.batches())
    head_before = model.head.weight.detach().clone()
    train_cached(cache, optimizer)
    assert not torch.equal(model.head.weight, head_before)


def test_bad_arguments_are_refused_with_the_value_named(tmp_path):
    _, _, tuner = setup()
    images, labels = make_data(16)
    dataset = torch.utils.data.TensorDataset(images, labels)
    good = batches_of((images, labels))
    with pytest.raises(ValueError, match="shuffling"):
        FeatureCache(tuner, torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True))
    with pytest.raises(TypeError, match="re-iterable"):
        FeatureCache(tuner, iter(good))
    with pytest.raises(ValueError, match="dtype must be one of"):
        FeatureCache(tuner, good, dtype=torch.int8)
    with pytest.raises(ValueError, match="not both"):
        FeatureCache(tuner, good, max_bytes=10, max_gb=1.0)
    with pytest.raises(ValueError, match="max_gb must be a positive"):
        FeatureCache(tuner, good, max_gb=-1)
    with pytest.raises(ValueError, match="not an existing folder"):
        FeatureCache(tuner, good, directory=tmp_path / "missing")
    with pytest.raises(ValueError, match="storage must be one of"):
        FeatureCache(tuner, good, storage="gpu")
    with pytest.raises(TypeError, match="DynamicFineTuner"):
        FeatureCache(object(), good)
    with pytest.raises(TypeError, match="first item"):
        FeatureCache(tuner, [{"x": images}])
    cache = FeatureCache(tuner, torch.utils.data.DataLoader(dataset, batch_size=4))
    next(cache.batches())
    with pytest.raises(ValueError, match="expects what cache.batches"):
        cache.model(images)


def test_training_through_the_cache_under_ddp_is_refused(monkeypatch):
    import dynft_torch.feature_cache as module

    _, _, tuner = setup()
    cache = FeatureCache(tuner, batches_of(make_data(16)))
    features, _ = next(cache.batches())
    monkeypatch.setattr(module, "world_size", lambda: 2)
    with pytest.raises(RuntimeError, match="DistributedDataParallel"):
        cache.model(features)
    with torch.no_grad():
        cache.model(features)


def test_features_served_before_an_unfreeze_are_refused_after_it():
    _, _, tuner = setup()
    cache = FeatureCache(tuner, batches_of(make_data(16)))
    stale, _ = next(cache.batches())
    tuner.step(1.0)
    tuner.step(2.0)  # backbone.3 unfrozen: the cut moves to backbone.2, same feature shape
    with pytest.raises(RuntimeError, match="before the cut moved"):
        cache.model(stale)


def test_a_failed_construction_leaves_no_hook_and_a_closed_cache_refuses_work():
    from test_feature_cache_cuts import InputSkip

    model = InputSkip()
    tuner = DynamicFineTuner(model, torch.optim.SGD(model.parameters(), lr=0.1), "backbone")
    hooks_before = sum(len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(ValueError, match="skip connection"):
        FeatureCache(tuner, batches_of(make_data(16)))
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
    _, _, tuner = setup()
    cache = FeatureCache(tuner, batches_of(make_data(16)))
    cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(cache.batches())


def test_a_fixed_top_n_without_a_tuner_is_cached_through_an_object_with_the_same_fields():
    # the traditional top-n baseline: the same frozen layers for the whole run, no scheduler
    from types import SimpleNamespace

    from dynft_torch import resolve_groups

    torch.manual_seed(0)
    model = TinyNet()
    groups = resolve_groups(model, "backbone")
    for group in groups[:3]:
        for name in group.parameter_names:
            model.get_parameter(name).requires_grad_(False)
    fixed = SimpleNamespace(model=model, groups=groups, scheduler=SimpleNamespace(num_unfrozen=1))
    val = batches_of(make_data(32))
    cache = FeatureCache(fixed, val)
    assert cache.cut == "backbone.2"
    for _ in range(2):
        assert torch.equal(cached_outputs(cache), plain_outputs(model, val))
    assert cache.stats.hits == 2

"""Served training batches: keys in order, features checked against the cut they were made at,
and a fitted model whose state is the rest model's alone.

A scripted cache stands in for ``dynft_keras.FeatureCache`` (its cut moves when the test says
so, its frozen part is a fixed function), so each rule of :class:`ServedTrainBatches` is driven
on its own; the runs of the whole runner are in ``test_keras_feature_cache_study.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from benchmarks.study.data.batches import make_training_data
from benchmarks.study.data.phantom import make_phantom
from benchmarks.study.data.splits import split_dataset
from benchmarks.study.runners.keras_training_cache import (
    ServedModel,
    ServedTrainBatches,
    plain_training_batches,
)


class ScriptedCache:
    """The frozen part is the per-image mean, one feature wide; ``cut`` moves when set."""

    def __init__(self, data, rest: keras.Model, over_limit: bool = False) -> None:
        self.data = plain_training_batches(data, lambda x: x)
        self.cut: str | None = "conv_a"
        self.stats = SimpleNamespace(fallback="over the limit" if over_limit else None)
        self.model, self.closed = rest, False
        self.computed = 0

    def features(self, inputs: np.ndarray) -> np.ndarray:
        self.computed += len(inputs)
        return inputs.mean(axis=(1, 2, 3))[:, None].astype(np.float32)

    def batches(self):
        for inputs, positions in self.data:
            yield self.features(inputs), positions


def _rest() -> keras.Model:
    inputs = keras.Input((1,))
    return keras.Model(inputs, keras.layers.Dense(7, name="head")(inputs), name="rest")


@pytest.fixture
def data():
    dataset = make_phantom(84, 32, seed=0)
    return make_training_data(
        dataset.images, dataset.labels, split_dataset(dataset, 0), 32, 7, 16, seed=0
    )


@pytest.mark.parametrize("over_limit", [False, True])
def test_a_batch_is_served_the_features_of_its_own_samples(data, over_limit):
    cache = ScriptedCache(data, _rest(), over_limit)
    batches = ServedTrainBatches(data, lambda x: x, cache)
    plan = [indices.copy() for indices in batches.plan]
    for index, indices in enumerate(plan):
        keys, labels, _ = batches[index]
        assert keys.dtype == np.int32 and len(set(keys)) == 1 and len(keys) == len(indices)
        served = batches.lookup(keys)
        np.testing.assert_array_equal(labels, data.train.labels[indices])
        plain = ~data.augmented(labels)
        expected = cache.features(data.plain_train_images(indices[plain]))
        np.testing.assert_allclose(served[plain], expected, rtol=1e-6)
        assert served.shape == (len(indices), 1)


def test_the_table_is_gathered_once_per_cut_and_again_every_epoch(data):
    cache = ScriptedCache(data, _rest())
    batches = ServedTrainBatches(data, lambda x: x, cache)
    stored = len(plain_training_batches(data, lambda x: x).positions)
    batches.lookup(batches[0][0])
    gathered = cache.computed
    assert gathered >= stored  # the table, plus the batch's augmented rows
    batches.lookup(batches[1][0])
    assert cache.computed - gathered < stored  # the same table: only augmented rows computed
    batches.on_epoch_end()
    before = cache.computed
    batches.lookup(batches[0][0])
    assert cache.computed - before >= stored  # the next epoch gathers the table again


def test_a_batch_prepared_before_the_cut_moved_raises(data):
    cache = ScriptedCache(data, _rest())
    batches = ServedTrainBatches(data, lambda x: x, cache)
    keys = batches[0][0]
    cache.cut = "conv_b"  # an unfreeze between preparing the batch and training it
    with pytest.raises(RuntimeError, match="prepared at the cut 'conv_a'.*to 'conv_b'"):
        batches.lookup(keys)


def test_lookup_repeats_the_last_batch_and_drops_the_peeked_ones(data):
    cache = ScriptedCache(data, _rest())
    batches = ServedTrainBatches(data, lambda x: x, cache)
    peeked, first = batches[0][0], batches[0][0]  # fit reads one batch to learn shapes
    served = batches.lookup(first)
    assert batches.lookup(first) is served  # a host callback may run twice for one step
    with pytest.raises(KeyError):
        batches.lookup(peeked)  # dropped: never trained, and it holds no memory any more
    assert not batches._prepared


def test_the_served_model_holds_the_rest_models_state_only(data):
    whole_inputs = keras.Input((4, 4, 3))
    frozen = keras.layers.Dense(1, name="frozen")(whole_inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(frozen)
    whole = keras.Model(whole_inputs, keras.layers.Dense(7, name="head")(pooled))
    rest = _rest()
    cache = ScriptedCache(data, rest)
    model = ServedModel(whole, ServedTrainBatches(data, lambda x: x, cache))
    assert [id(v) for v in model.variables] == [id(v) for v in rest.variables]
    assert not any("frozen" in v.path for v in model.weights)
    weights = [np.full(w.shape, 0.5, w.dtype) for w in rest.get_weights()]
    model.set_weights(weights)
    for set_to, held in zip(weights, rest.get_weights(), strict=True):
        np.testing.assert_array_equal(set_to, held)
    later = _rest()
    cache.model = later  # an unfreeze moved the cut: a new rest model
    assert [id(v) for v in model.variables] == [id(v) for v in later.variables]
    cache.closed = True  # training ended: the last rest model stays the model's state
    cache.model = None
    assert [id(v) for v in model.variables] == [id(v) for v in later.variables]

"""The Keras runner with the feature cache equals the runner without it, on every backend.

Same seed, ``feature_cache="auto"`` vs ``"off"`` on a tiny base: the cache serves the
validation pass (the same batches, through the rest of the model after the cut) and, for the
strategies whose cut is fixed, the training batches (``fit`` trains the rest model on features;
the minority samples are augmented and take the frozen part computed on the spot), so the
timeline, the unfreeze events, the best epoch and every final weight must be equal bit for bit,
and the frozen layers must keep the weights they started with.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import shared_file
from test_keras_strategies import _tiny_base as two_conv_base

from benchmarks.study.config import StudyConfig
from benchmarks.study.data.batches import make_training_data
from benchmarks.study.data.phantom import CLASS_NAMES, make_phantom
from benchmarks.study.data.splits import split_dataset
from benchmarks.study.models import keras_backbones
from benchmarks.study.presets import SHARED_FILES
from benchmarks.study.runners import keras_runner
from benchmarks.study.runners.records import RunContext

TINY = "tiny_keras_cache_cnn"


def _tiny_base(weights: str | None, image_size: int) -> keras.Model:
    # the strategies' two-convolution base and a third convolution: a dynamic run with step 1
    # keeps conv_a frozen over the test's epochs
    two = two_conv_base(weights, image_size)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_c")(two.output)
    return keras.Model(two.input, x, name="tiny_base")


@pytest.fixture(scope="module", autouse=True)
def tiny() -> None:
    spec = keras_backbones.KerasBackbone(TINY, _tiny_base, lambda x: x / 127.5 - 1.0, 1, 32)
    keras_backbones.register_backbone(spec, replace=True)


def _train(
    strategy: str, tmp_path: Path, mode: str, backbone: str = TINY, size: int = 32, **settings
):
    dataset = make_phantom(84, 32, seed=0)
    data = make_training_data(
        dataset.images, dataset.labels, split_dataset(dataset, 0), size, 7, 16, seed=0
    )
    cfg = StudyConfig(
        **{"framework": "keras", "weights": "none", "epochs": 5, "patience": 1, "lr": 0.05,
           "step": 1, "feature_cache": mode, **settings},
    )  # fmt: skip
    ctx = RunContext(backbone, strategy, 0, "phantom", True, list(CLASS_NAMES), size, tmp_path)
    keras.utils.set_random_seed(0)  # the runner seeds the same way before building
    initial = keras_runner.build_model(ctx, "none")[0].get_weights()
    model, outcome, _, _ = keras_runner.train(cfg, ctx, data)
    base = model.layers[1]  # input, base, pooling, head
    return initial, model, base, outcome


@pytest.mark.parametrize("strategy", ["dynamic", "two_stage", "traditional", "linear_probe"])
def test_a_run_is_identical_with_the_cache(tmp_path, strategy):
    _, plain_model, _, plain = _train(strategy, tmp_path, "off")
    initial, model, base, cached = _train(strategy, tmp_path, "auto")
    assert cached.timeline == plain.timeline
    assert cached.unfreeze_events == plain.unfreeze_events
    assert cached.best_epoch == plain.best_epoch
    for first, second in zip(plain_model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(first, second)
    figures = cached.feature_cache
    assert figures["feature_cache"] == "auto" and plain.feature_cache["feature_cache"] == "off"
    validation = figures["feature_cache_detail"]["validation"]
    assert validation["hits"] > 0 and figures["cache_size_mb"] > 0
    training = figures["feature_cache_detail"]["training"]
    if strategy in ("traditional", "linear_probe"):  # one build, served every epoch
        assert training["builds"] == 1 and training["hits"] >= (len(cached.timeline) - 1)
    if strategy == "two_stage":
        # the head's epochs are served from one table; the whole backbone then trains on images
        assert cached.unfreeze_events, "patience 1 at a rate of 0.05 unfreezes within 5 epochs"
        assert training["builds"] == 1 and training["hits"] > 0
        return  # nothing stays frozen to check below
    if strategy == "dynamic":
        assert cached.unfreeze_events, "patience 1 at a rate of 0.05 unfreezes within 5 epochs"
        trainable_sets = len({entry["num_unfrozen"] for entry in cached.timeline})
        # a table per cut, built by the first batch after the unfreeze that moved it
        assert validation["builds"] >= min(trainable_sets, 2)
        assert training["builds"] >= min(trainable_sets, 2) and training["hits"] > 0
        frozen_count = cached.num_groups - cached.timeline[-1]["num_unfrozen"]
    else:
        frozen_count = 3 - (cached.top_n or 0) // 2  # the Keras layers: conv and bn pairs
    # the layers below the cut never changed (conv_a is frozen in every case above)
    initial_model = keras_runner.build_model(
        RunContext(TINY, strategy, 0, "phantom", True, list(CLASS_NAMES), 32, tmp_path), "none"
    )[0]
    initial_model.set_weights(initial)
    initial_base = initial_model.get_layer("tiny_base")
    assert frozen_count >= 1
    for name in ("conv_a", "bn_a"):
        for before, after in zip(
            initial_base.get_layer(name).get_weights(),
            base.get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(before, after)


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="JAX compiles MobileNetV2's steps for 80 s on a CPU; the tiny base covers JAX",
)
@pytest.mark.parametrize("strategy", ["traditional", "dynamic"])
def test_a_mobilenet_v2_run_is_identical_with_the_cache(tmp_path, strategy):
    # A real architecture, not only the tiny base: on TensorFlow, oneDNN picks its kernels by
    # the shapes the graph declares, and a served step whose features arrived without a
    # declared shape rounded by 1e-7, which Adam's first steps (about +-lr per weight whatever
    # the gradient's size) turned into different decisions on MobileNetV2.
    weights = str(shared_file(SHARED_FILES["mobilenet_v2"]))  # random weights never showed it
    settings = {"lr": 1e-3, "weights": weights}
    _, plain_model, _, plain = _train(strategy, tmp_path, "off", "mobilenet_v2", 96, **settings)
    _, model, _, cached = _train(strategy, tmp_path, "auto", "mobilenet_v2", 96, **settings)
    assert cached.feature_cache["feature_cache_detail"]["training"]["hits"] > 0
    assert cached.timeline == plain.timeline and cached.best_epoch == plain.best_epoch
    for first, second in zip(plain_model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(first, second)


def test_over_the_memory_limit_served_training_recomputes_with_the_same_result(tmp_path):
    _, plain_model, _, plain = _train("linear_probe", tmp_path, "off")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, model, _, cached = _train("linear_probe", tmp_path, "auto", feature_cache_max_gb=1e-9)
    assert cached.timeline == plain.timeline and cached.best_epoch == plain.best_epoch
    for first, second in zip(plain_model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(first, second)
    messages = [str(w.message) for w in caught if "over the limit" in str(w.message)]
    assert len(messages) == 2  # one per cache: validation and training
    detail = cached.feature_cache["feature_cache_detail"]
    assert set(detail) == {"validation", "training"}
    assert all("over the limit" in stats["fallback"] for stats in detail.values())
    assert cached.feature_cache["cache_size_mb"] == 0.0

"""The Keras runner on a tiny base, on every Keras backend: each strategy trains exactly its
layers (checked on the weights), and a run repeated with its seed is identical."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from recording import record_instances

from benchmarks.study.config import STRATEGIES, StudyConfig
from benchmarks.study.data.batches import make_training_data
from benchmarks.study.data.phantom import CLASS_NAMES, make_phantom
from benchmarks.study.data.splits import split_dataset
from benchmarks.study.models import keras_backbones
from benchmarks.study.runners import keras_runner
from benchmarks.study.runners.records import RunContext

TINY = "tiny_keras_cnn"
LR = 0.01
PLATEAU_LR = 0.1


def _tiny_base(weights: str | None, image_size: int) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    return keras.Model(inputs, x, name="tiny_base")


@pytest.fixture(scope="module")
def tiny() -> str:
    spec = keras_backbones.KerasBackbone(TINY, _tiny_base, lambda x: x / 127.5 - 1.0, 2, 32)
    keras_backbones.register_backbone(spec, replace=True)
    return TINY


def _weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    base = model.get_layer("tiny_base")
    layers = {layer.name: layer for layer in base.layers}
    layers["head"] = model.layers[-1]
    # layers without weights (the auto-named input) are left out, so names match across models
    return {
        name: [np.array(w) for w in layer.get_weights()]
        for name, layer in layers.items()
        if layer.get_weights()
    }


def _train(
    strategy: str, tmp_path: Path, final_weights: bool = False, lr: float = LR, ratio: float = 1.0
):
    dataset = make_phantom(84, 32, seed=0)
    data = make_training_data(
        dataset.images, dataset.labels, split_dataset(dataset, 0), 32, 7, 16, seed=0
    )
    cfg = StudyConfig(
        framework="keras", weights="none", epochs=4, patience=1, lr=lr, unfrozen_lr_ratio=ratio
    )
    ctx = RunContext(TINY, strategy, 0, "phantom", True, list(CLASS_NAMES), 32, tmp_path)
    keras.utils.set_random_seed(0)  # the runner seeds the same way before building
    initial = _weights(keras_runner.build_model(ctx, "none")[0])
    model, outcome, _, _ = keras_runner.train(cfg, ctx, data)
    final = _weights(model)
    if final_weights:
        return outcome, final
    changed = {
        name: any(not np.array_equal(a, b) for a, b in zip(initial[name], final[name], strict=True))
        for name in initial
    }
    return outcome, changed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_changes_exactly_its_layers(strategy, tiny, tmp_path):
    outcome, changed = _train(strategy, tmp_path)
    assert changed["head"]
    assert not changed["bn_a"] and not changed["bn_b"]  # BatchNorm frozen, statistics too
    staged = any(e["epoch"] < outcome.best_epoch for e in outcome.unfreeze_events)
    expected = {
        "linear_probe": (False, False),
        "traditional": (False, True),  # the Keras top 2 layers: conv_b and bn_b
        "full": (True, True),
        "two_stage": (staged, staged),
        "dynamic": (staged, staged),  # step 3 > the 2 convolutions: both at once
        "dynamic_tuned": (staged, staged),  # at the study's default ratio of 1
    }[strategy]
    assert (changed["conv_a"], changed["conv_b"]) == expected


def test_two_stage_unfreezes_the_whole_base_at_a_tenth_of_the_rate(tiny, tmp_path):
    # at 0.1 the head overshoots within 4 epochs on every backend, so the first plateau comes
    outcome, _ = _train("two_stage", tmp_path, lr=PLATEAU_LR)
    assert outcome.num_groups == 1
    (event,) = outcome.unfreeze_events  # one group: the second plateau stops
    assert event["groups"] == [0] and event["lr"] == pytest.approx(PLATEAU_LR * 0.1)
    after = [entry for entry in outcome.timeline if entry["epoch"] > event["epoch"]]
    assert all(entry["lr"] == pytest.approx(PLATEAU_LR * 0.1) for entry in after)


@pytest.mark.parametrize(("strategy", "ratio"), [("dynamic_tuned", 0.1), ("dynamic", 1.0)])
def test_the_unfrozen_layers_train_at_the_ratio_of_the_heads_rate(
    strategy, ratio, tiny, tmp_path, monkeypatch
):
    import dynft_keras

    tuners = record_instances(monkeypatch, dynft_keras, "DynamicFineTuning")
    # dynamic ignores the study's ratio: Algorithm 1 runs everything at one rate
    outcome, _ = _train(strategy, tmp_path, lr=PLATEAU_LR, ratio=0.1)
    (tuner,) = tuners
    assert tuner.config.unfrozen_lr_ratio == ratio
    assert outcome.unfreeze_events, "patience 1 over 4 epochs unfreezes at the first miss"
    rates = tuner.model.optimizer.learning_rates()
    assert rates["head"] == pytest.approx(outcome.unfreeze_events[-1]["lr"])
    assert rates["unfreeze 1"] == pytest.approx(ratio * rates["head"])


def test_a_run_repeated_with_its_seed_is_identical(tiny, tmp_path):
    keras_runner.configure(StudyConfig(framework="keras", threads=None))
    first_outcome, first = _train("dynamic", tmp_path, final_weights=True)
    second_outcome, second = _train("dynamic", tmp_path, final_weights=True)
    assert first_outcome.timeline == second_outcome.timeline
    assert first_outcome.unfreeze_events == second_outcome.unfreeze_events
    for name in first:
        for a, b in zip(first[name], second[name], strict=True):
            np.testing.assert_array_equal(a, b)

"""dynft_keras.FeatureCache on each backend: exact outputs in a real fit, training, cuts, limits."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning, FeatureCache
from dynft_keras.freezing import apply_trainable
from dynft_keras.frozen_prefix import CutError
from keras_helpers import (
    IMAGE,
    NUM_CLASSES,
    ScriptedMonitor,
    assert_split_equal,
    tiny_data,
    tiny_model,
    weights_of,
)

L = keras.layers


def residual_model(
    seed: int = 0, frozen_dropout: bool = False, head_dropout: float = 0.3
) -> tuple[keras.Model, keras.Model]:
    """conv0 -> [conv1 -> conv2] + skip -> conv3; head: pooling, dropout, dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.ReLU(name="relu0")(
        L.BatchNormalization(name="bn0")(L.Conv2D(4, 3, padding="same", name="conv0")(inputs))
    )
    if frozen_dropout:
        x = L.Dropout(0.5, name="frozen_drop")(x)
    y = L.ReLU(name="relu1")(L.Conv2D(4, 3, padding="same", name="conv1")(x))
    y = L.Conv2D(4, 3, padding="same", name="conv2")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(name="relu3")(L.Conv2D(4, 3, padding="same", name="conv3")(x))
    backbone = keras.Model(inputs, x, name="backbone")
    outer_inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.GlobalAveragePooling2D(name="pool")(backbone(outer_inputs))
    x = L.Dropout(head_dropout, name="head_drop")(x)
    outputs = L.Dense(NUM_CLASSES, activation="softmax", name="head")(x)
    return keras.Model(outer_inputs, outputs, name="classifier"), backbone


def batches(count: int = 24, size: int = 8, seed: int = 1):
    x, y = tiny_data(count, seed)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, count, size)]


def concat_predictions(model, data):
    return np.concatenate([keras.ops.convert_to_numpy(model.predict_on_batch(x)) for x, _ in data])


class CompareEveryEpoch(keras.callbacks.Callback):
    """After DynamicFineTuning acted: cached predictions (built, then served) vs the model's."""

    def __init__(self, cache: FeatureCache, data) -> None:
        super().__init__()
        self.cache, self.data, self.cuts = cache, data, []

    def on_epoch_end(self, epoch, logs=None):
        expected = concat_predictions(self.model, self.data)
        for _ in range(2):
            assert_split_equal(self.cache.predict(), expected)
        self.cuts.append(self.cache.cut)


def compared_fit(optimizer: keras.optimizers.Optimizer, epochs: int):
    """A compiled residual model, its DynamicFineTuning (p = 1, k = 1), a cache over validation
    batches and the callback that compares the two every epoch."""
    model, backbone = residual_model()
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    val = batches()
    cb = DynamicFineTuning(backbone, patience=1, step=1, max_epochs=epochs, verbose=0)
    cache = FeatureCache(cb, val, model=model)
    return model, cb, cache, CompareEveryEpoch(cache, val), val


def test_predictions_through_the_cache_equal_the_model_through_a_whole_fit():
    model, cb, cache, compare, _ = compared_fit(keras.optimizers.SGD(0.05), 6)
    x, y = tiny_data(32)
    monitor = ScriptedMonitor([1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    model.fit(
        x, y, batch_size=8, epochs=6, shuffle=False, verbose=0, callbacks=[monitor, cb, compare]
    )
    # groups conv0..conv3, every miss unfreezes one (deepest first). Once conv2, inside the
    # residual block, trains, the deepest cut before it that no tensor crosses is relu0.
    assert compare.cuts == ["relu3", "add", "relu0", "relu0", None, None]
    assert cache.stats.builds == 4 and cache.stats.hits == 4 * 3


def test_the_cache_stays_exact_beside_early_stopping_and_a_checkpoint(tmp_path):
    # the cache serves a user's own validation metric while fit also runs EarlyStopping and
    # ModelCheckpoint on val_loss: rollbacks, unfreezes and the final restore all move weights
    model, cb, cache, compare, val = compared_fit(keras.optimizers.Adam(0.05), 10)
    best = tmp_path / "best.weights.h5"
    callbacks = [
        cb,
        compare,
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=3),
        keras.callbacks.ModelCheckpoint(best, save_best_only=True, save_weights_only=True),
    ]
    x, y = tiny_data(32)
    val_x, val_y = (np.concatenate(part) for part in zip(*val, strict=True))
    history = model.fit(
        x, y, validation_data=(val_x, val_y), batch_size=8, epochs=10, shuffle=False,
        verbose=0, callbacks=callbacks,
    )  # fmt: skip
    assert len(compare.cuts) == len(history.history["loss"]) >= 2
    assert any(d.newly_unfrozen for d in cb.scheduler.history), "nothing unfroze"
    # the run ends on the best-validation weights, which the checkpoint holds too
    assert_split_equal(cache.predict(), concat_predictions(model, val))
    saved, _ = residual_model(seed=9)
    saved.load_weights(best)
    final = weights_of(model)
    for path, value in weights_of(saved).items():
        np.testing.assert_array_equal(final[path], value, err_msg=path)


def test_cut_of_the_whole_backbone_and_inside_it():
    model, backbone = residual_model()
    cb = DynamicFineTuning(backbone, patience=1, step=1, max_epochs=10, verbose=0)
    cache = FeatureCache(cb, batches(), model=model)
    assert cache.cut == "relu3"  # head only: the backbone's last layer
    for _ in range(2):
        cb.scheduler.step(1.0)
    assert cb.scheduler.num_unfrozen == 1  # conv3 trains: cut after the residual's add
    list(cache.batches())
    assert cache.cut == "add"


def test_training_through_the_cache_equals_training_the_model():
    data = batches(32)
    runs = []
    for through_cache in (False, True):
        model, backbone = residual_model(seed=3)
        cb = DynamicFineTuning(backbone, patience=1, step=1, max_epochs=10, verbose=0)
        cb.scheduler.step(1.0)
        cb.scheduler.step(1.0)  # conv3 unfrozen: partly unfrozen backbone
        apply_trainable(backbone, cb.groups, cb.scheduler.num_unfrozen)
        before = weights_of(model)
        cache = FeatureCache(cb, data, model=model)
        trained = cache.model if through_cache else model
        trained.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
        keras.utils.set_random_seed(7)
        for _ in range(2):
            source = cache.batches() if through_cache else iter(data)
            for x, y in source:
                trained.train_on_batch(x, y)
        runs.append((before, weights_of(model), cache))
    (before, plain, _), (_, cached, cache) = runs
    assert cache.stats.hits == 4
    for path, value in plain.items():
        np.testing.assert_array_equal(cached[path], value, err_msg=path)
    below_cut = [p for p in before if p.split("/")[0] in ("conv0", "bn0", "conv1", "conv2")]
    assert len(below_cut) == 10
    for path in below_cut:
        np.testing.assert_array_equal(cached[path], before[path], err_msg=f"{path} moved")
    for path in ("conv3/kernel", "head/kernel"):
        assert not np.array_equal(cached[path], before[path]), f"{path} did not train"


@pytest.mark.filterwarnings("ignore:feature cache. the features")
def test_frozen_dropout_runs_in_inference_mode_through_the_cache_and_is_named():
    model, backbone = residual_model(frozen_dropout=True, head_dropout=0.0)
    cb = DynamicFineTuning(backbone, max_epochs=10, verbose=0)
    data = batches()
    x = data[0][0]
    reference = keras.ops.convert_to_numpy(model(x, training=False))
    with pytest.warns(RuntimeWarning, match="frozen_drop"):
        serving = FeatureCache(cb, data, model=model)
    computing = FeatureCache(cb, data, model=model, max_bytes=1)
    for cache in (serving, computing):
        for _ in range(2):  # the build pass and the next one (served, or computed again)
            features = [x for x, _ in cache.batches()][0]
            trained = keras.ops.convert_to_numpy(cache.model(features, training=True))
            np.testing.assert_array_equal(trained, reference)
    assert serving.stats.hits == 3 and computing.stats.hits == 0
    # a plain training-mode call of the model itself does drop out in the frozen part
    assert not np.array_equal(keras.ops.convert_to_numpy(model(x, training=True)), reference)


def test_over_the_limit_it_recomputes_exactly_with_one_warning():
    model, backbone = residual_model()
    cb = DynamicFineTuning(backbone, max_epochs=10, verbose=0)
    data = batches()
    expected = concat_predictions(model, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = FeatureCache(cb, data, model=model, max_bytes=100)
        for _ in range(3):
            assert_split_equal(cache.predict(), expected)
    assert sum("over the limit" in str(w.message) for w in caught) == 1
    assert cache.stats.hits == 0 and cache.stats.size_bytes == 0


def test_float16_and_memory_mapped_storage(tmp_path):
    model, backbone = residual_model()
    cb = DynamicFineTuning(backbone, max_epochs=10, verbose=0)
    data = batches()
    expected = concat_predictions(model, data)
    half = FeatureCache(cb, data, model=model, dtype="float16")
    first, second = half.predict(), half.predict()
    np.testing.assert_array_equal(first, second)
    assert np.max(np.abs(second - expected)) < 1e-2
    mapped = FeatureCache(cb, data, model=model, directory=tmp_path)
    assert_split_equal(mapped.predict(), expected)
    assert len(list(tmp_path.iterdir())) == 1
    assert_split_equal(mapped.predict(), expected)
    feature_bytes, label_bytes = 24 * IMAGE * IMAGE * 4 * 4, 24 * NUM_CLASSES * 4
    assert mapped.stats.size_bytes == feature_bytes + label_bytes
    assert half.stats.size_bytes == feature_bytes // 2 + label_bytes
    mapped.close()
    assert list(tmp_path.iterdir()) == []


def test_a_frozen_weight_changed_from_outside_rebuilds():
    model, backbone = residual_model()
    cb = DynamicFineTuning(backbone, max_epochs=10, verbose=0)
    data = batches()
    cache = FeatureCache(cb, data, model=model)
    cache.predict()
    cache.predict()
    kernel = backbone.get_layer("conv1").kernel
    kernel.assign(kernel * 2.0)
    assert_split_equal(cache.predict(), concat_predictions(model, data))
    assert cache.stats.builds == 2


def _skip_around_backbone():
    model, backbone = tiny_model()
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.Concatenate()(
        [L.GlobalAveragePooling2D()(backbone(inputs)), L.GlobalAveragePooling2D()(inputs)]
    )
    return keras.Model(inputs, L.Dense(NUM_CLASSES)(x)), backbone


def _augmentation_before_backbone():
    _, backbone = tiny_model()
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.GlobalAveragePooling2D()(backbone(L.RandomFlip()(inputs)))
    return keras.Model(inputs, L.Dense(NUM_CLASSES)(x)), backbone


def _backbone_called_twice():
    _, backbone = tiny_model()
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.Add()([backbone(inputs), backbone(inputs)])
    return keras.Model(inputs, L.Dense(NUM_CLASSES)(L.GlobalAveragePooling2D()(x))), backbone


class _Subclassed(keras.Model):
    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.pool, self.dense = backbone, L.GlobalAveragePooling2D(), L.Dense(3)

    def call(self, x):
        return self.dense(self.pool(self.backbone(x)))


def _subclassed():
    _, backbone = tiny_model()
    model = _Subclassed(backbone)
    model(np.zeros((1, IMAGE, IMAGE, 3), "float32"))
    return model, backbone


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (_skip_around_backbone, "skip connection around the backbone"),
        (_augmentation_before_backbone, "RandomFlip"),
        (_backbone_called_twice, "exactly once"),
        (_subclassed, "subclassed"),
    ],
    ids=["skip-around-backbone", "augmentation-in-model", "backbone-twice", "subclassed"],
)
def test_models_without_a_cut_get_a_clear_error(build, match):
    model, backbone = build()
    cb = DynamicFineTuning(backbone, max_epochs=10, verbose=0)
    with pytest.raises(CutError, match=match):
        FeatureCache(cb, batches(), model=model)


def test_groups_out_of_order_are_refused():
    model, backbone = tiny_model()
    cb = DynamicFineTuning(
        backbone,
        groups=[["conv2"], ["conv1"], ["conv0"]],
        patience=1,
        step=1,
        max_epochs=10,
        verbose=0,
    )
    cb.scheduler.step(1.0)
    cb.scheduler.step(1.0)  # conv0, the first to run, is unfrozen: conv1/conv2 run after it
    with pytest.raises(CutError, match="not a prefix"):
        FeatureCache(cb, batches(), model=model)


def test_bad_arguments_are_refused(tmp_path):
    model, backbone = tiny_model()
    cb = DynamicFineTuning(backbone, max_epochs=10, verbose=0)
    data = batches()
    with pytest.raises(ValueError, match="pass model="):
        FeatureCache(cb, data)
    with pytest.raises(TypeError, match="re-iterable"):
        FeatureCache(cb, iter(data), model=model)
    with pytest.raises(ValueError, match="dtype must be one of"):
        FeatureCache(cb, data, model=model, dtype="int8")
    with pytest.raises(ValueError, match="not both"):
        FeatureCache(cb, data, model=model, max_bytes=1, max_gb=1)
    with pytest.raises(ValueError, match="not an existing folder"):
        FeatureCache(cb, data, model=model, directory=tmp_path / "missing")
    with pytest.raises(TypeError, match="DynamicFineTuning"):
        FeatureCache(object(), data, model=model)
    with pytest.raises(TypeError, match="not a dict"):
        FeatureCache(cb, [{"x": data[0][0]}], model=model)


class _Batches(keras.utils.PyDataset):
    def __init__(self, data):
        super().__init__()
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


def test_a_sequential_model_and_a_py_dataset():
    _, backbone = tiny_model()
    model = keras.Sequential(
        [keras.Input((IMAGE, IMAGE, 3)), backbone, L.GlobalAveragePooling2D(), L.Dense(3)]
    )
    cb = DynamicFineTuning(backbone, max_epochs=10, verbose=0)
    data = batches()
    cache = FeatureCache(cb, _Batches(data), model=model)
    assert cache.cut == "relu2"
    for _ in range(2):
        assert_split_equal(cache.predict(), concat_predictions(model, data))
    assert cache.stats.hits == 3


def test_a_backbone_given_as_layers_or_inlined_into_the_model_is_refused_with_the_remedy():
    model, backbone = residual_model()
    as_layers = DynamicFineTuning(backbone.layers[1:], patience=1, max_epochs=2, verbose=0)
    with pytest.raises(CutError, match="called as a layer of the model"):
        FeatureCache(as_layers, batches(), model=model)
    inlined = keras.Model(backbone.input, L.Dense(NUM_CLASSES)(L.Flatten()(backbone.output)))
    flattened = DynamicFineTuning(backbone, patience=1, max_epochs=2, verbose=0)
    with pytest.raises(CutError, match=r"head\(base\(inputs\)\)"):
        FeatureCache(flattened, batches(), model=inlined)


def test_a_backbone_given_as_layer_names_is_looked_up_in_the_model_before_fit():
    model, _ = residual_model()
    by_names = DynamicFineTuning(["backbone"], patience=1, max_epochs=2, verbose=0)
    cache = FeatureCache(by_names, batches(), model=model)
    assert_split_equal(cache.predict(), concat_predictions(model, batches()))

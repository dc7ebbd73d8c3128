"""Tiny Keras models and helper callbacks for the dynft_keras tests.

Run once per backend, each in its own process, e.g.
``KERAS_BACKEND=jax python -m pytest tests/keras -q``.
"""

from __future__ import annotations

import os

import numpy as np

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices for the MirroredStrategy test; this must happen
    # before TensorFlow initialises its devices, so every test module imports
    # this file before anything runs.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402

NUM_CLASSES = 3
IMAGE = 8


def tiny_backbone(name: str = "backbone") -> keras.Model:
    """Three conv layers, each followed by a BatchNormalization: 3 groups in "layers" mode."""
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = inputs
    for index in range(3):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
    return keras.Model(inputs, x, name=name)


def tiny_model(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """A built classifier ``(model, backbone)`` with a Dense head, seeded weights."""
    keras.utils.set_random_seed(seed)
    backbone = tiny_backbone()
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="classifier"), backbone


def tiny_data(count: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images and one-hot labels (float32)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, IMAGE, IMAGE, 3)).astype("float32")
    labels = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, count)]
    return images, labels


class ScriptedMonitor(keras.callbacks.Callback):
    """Writes ``values[epoch]`` into ``logs[key]``; list it before DynamicFineTuning."""

    def __init__(self, values: list[float], key: str = "val_loss") -> None:
        super().__init__()
        self.values = values
        self.key = key

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        assert logs is not None
        logs[self.key] = self.values[epoch]


class WeightRecorder(keras.callbacks.Callback):
    """Records every model weight (numpy copies keyed by path) at each epoch end.

    ``at_begin`` holds the values at train begin and ``epoch_begins`` those at each epoch
    begin (after the callbacks listed before it ran theirs: DynamicFineTuning carries out a
    restore when the next epoch begins).
    """

    def __init__(self) -> None:
        super().__init__()
        self.at_begin: dict[str, np.ndarray] = {}
        self.epoch_begins: list[dict[str, np.ndarray]] = []
        self.epochs: list[dict[str, np.ndarray]] = []

    def _copy(self) -> dict[str, np.ndarray]:
        return {
            v.path: np.array(keras.ops.convert_to_numpy(v.value), copy=True)
            for v in self.model.weights
        }

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.at_begin = self._copy()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_begins.append(self._copy())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append(self._copy())


def weights_of(model: keras.Model) -> dict[str, np.ndarray]:
    """Numpy copies of every weight of ``model`` keyed by path."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in model.weights}


def paths_of(layer: keras.layers.Layer) -> list[str]:
    """Paths of the weights of ``layer``."""
    return [v.path for v in layer.weights]


# XLA compiles the whole model and its split prefix/rest into differently fused CPU kernels; on
# some CPUs (an AMD EPYC with AVX-512 here) their outputs differ in the last bit (6e-8 measured).
# TensorFlow and torch run the same kernels both ways and are compared bit for bit.
JAX_SPLIT_RTOL = 1e-6


def assert_split_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Outputs through the cut model equal the whole model's: bit for bit, on JAX to the last
    bits (``JAX_SPLIT_RTOL``)."""
    if keras.backend.backend() == "jax":
        np.testing.assert_allclose(actual, expected, rtol=JAX_SPLIT_RTOL, atol=0)
    else:
        np.testing.assert_array_equal(actual, expected)

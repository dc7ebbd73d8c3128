"""A cheap value that changes whenever one of a list of Keras weights is changed.

The feature cache compares it before every pass, so it must cost far less than the pass: on the
torch backend it is the tensors' version counters (every in-place change bumps them); on
TensorFlow and JAX one compiled function summing the bit patterns of every weight (a change of any
value changes its sum unless other values of the same weight change to cancel it exactly; JAX
replaces the arrays of every variable a ``predict`` touches, so their identities cannot serve).
Other backends hash a NumPy copy.
Only floating-point weights count: integer state such as a Dropout's seed advances in training
mode without changing what the layer computes in inference mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import keras
import numpy as np


def _tensorflow_bit_sums(variables: Sequence[keras.Variable]) -> Callable[[], Hashable]:
    import tensorflow as tf

    widths = {2: tf.int16, 4: tf.int32, 8: tf.int64}

    @tf.function
    def sums() -> Any:
        return tf.stack(
            [
                tf.reduce_sum(tf.cast(tf.bitcast(v.value, widths[v.value.dtype.size]), tf.int64))
                for v in variables
            ]
        )

    return lambda: bytes(sums().numpy().tobytes())


def _jax_bit_sums(variables: Sequence[keras.Variable]) -> Callable[[], Hashable]:
    import jax
    import jax.numpy as jnp

    widths = {2: jnp.int16, 4: jnp.int32, 8: jnp.int32}

    @jax.jit
    def sums(arrays: list[Any]) -> Any:
        bits = [
            jax.lax.bitcast_convert_type(a, widths[a.dtype.itemsize]).astype(jnp.int32)
            for a in arrays
        ]
        return jnp.stack([jnp.sum(b) for b in bits])

    return lambda: bytes(np.asarray(sums([v.value for v in variables])).tobytes())


def fingerprint(variables: Sequence[keras.Variable]) -> Callable[[], Hashable]:
    """A function returning a value that changes when any floating-point variable changes."""
    floating = [v for v in variables if keras.backend.is_float_dtype(v.dtype)]
    backend = keras.backend.backend()
    if not floating:
        return lambda: ()
    if backend == "torch":
        return lambda: tuple((id(v.value), v.value._version) for v in floating)
    if backend == "jax":
        return _jax_bit_sums(floating)
    if backend == "tensorflow":
        return _tensorflow_bit_sums(floating)

    def digest() -> Hashable:
        hashed = hashlib.blake2b(digest_size=16)
        for variable in floating:
            hashed.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value)))
        return hashed.hexdigest()

    return digest

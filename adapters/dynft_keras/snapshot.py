"""Host-memory copy of the model state that training can change (the best epoch's weights)."""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np


def changeable_variables(model: keras.Model) -> list[keras.Variable]:
    """The variables that one more epoch of ``fit`` may change.

    These are the model's trainable weights plus the non-trainable weights
    owned by layers that are themselves trainable (the moving statistics of a
    BatchNormalization layer in the head). Frozen layers, every
    BatchNormalization of the backbone included, cannot change and are left out.

    Args:
        model: The model being fitted.

    Returns:
        The variables, without duplicates, in a stable order.
    """
    variables = list(model.trainable_weights)
    seen = {id(v) for v in variables}

    def visit(layer: keras.layers.Layer) -> None:
        if not layer.trainable:
            return
        for variable in layer._non_trainable_variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
        for sublayer in layer._flatten_layers(include_self=False, recursive=False):
            visit(sublayer)

    visit(model)
    return variables


def _host_copy(variable: keras.Variable) -> np.ndarray:
    # copy=True: on torch and JAX the numpy view can alias a buffer that the
    # next train step overwrites in place or donates.
    return np.array(keras.ops.convert_to_numpy(variable.value), copy=True)


class WeightSnapshot:
    """The best epoch's values of a set of variables, held as numpy arrays in host memory.

    Attributes:
        epoch: The 1-based epoch the values were captured at, or ``None`` while empty.
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self._entries: dict[int, tuple[keras.Variable, np.ndarray]] = {}

    @property
    def empty(self) -> bool:
        """Whether nothing has been captured yet."""
        return self.epoch is None

    @property
    def nbytes(self) -> int:
        """Bytes of host memory held by the copied values."""
        return sum(array.nbytes for _, array in self._entries.values())

    def capture(self, variables: Iterable[keras.Variable], epoch: int) -> None:
        """Replace the snapshot with the current values of ``variables``.

        Args:
            variables: What to copy, usually
                [`changeable_variables`][dynft_keras.changeable_variables].
            epoch: The epoch being recorded (1-based).
        """
        self._entries = {id(v): (v, _host_copy(v)) for v in variables}
        self.epoch = epoch

    def extend(self, variables: Iterable[keras.Variable]) -> None:
        """Add the current values of variables the snapshot does not hold yet.

        Called just before frozen groups become trainable: having been frozen
        since the snapshot was taken, their current values are the best
        epoch's, and a later restore must bring them back too.
        """
        for variable in variables:
            if id(variable) not in self._entries:
                self._entries[id(variable)] = (variable, _host_copy(variable))

    def restore(self) -> None:
        """Assign the stored values back to their variables.

        Raises:
            RuntimeError: The snapshot is empty.
        """
        if self.empty:
            raise RuntimeError("no snapshot has been captured yet; nothing to restore")
        for variable, array in self._entries.values():
            variable.assign(array)

    def to_arrays(self, model: keras.Model) -> dict[str, np.ndarray]:
        """The values keyed by ``"<position in model.weights>"``, for saving to disk.

        Raises:
            ValueError: A held variable is not among ``model.weights``.
        """
        positions = {id(v): index for index, v in enumerate(model.weights)}
        arrays: dict[str, np.ndarray] = {}
        for key, (variable, array) in self._entries.items():
            if key not in positions:
                raise ValueError(
                    f"snapshot variable {variable.path!r} is not a weight of the model"
                )
            arrays[str(positions[key])] = array
        return arrays

    def load_arrays(self, model: keras.Model, arrays: dict[str, np.ndarray], epoch: int) -> None:
        """Inverse of [`to_arrays`][dynft_keras.WeightSnapshot.to_arrays] for the same architecture.

        Raises:
            ValueError: A position is out of range or a shape does not match.
        """
        weights = model.weights
        entries: dict[int, tuple[keras.Variable, np.ndarray]] = {}
        for key, array in arrays.items():
            position = int(key)
            if not 0 <= position < len(weights):
                raise ValueError(
                    f"saved snapshot refers to weight #{position}, but the model has "
                    f"{len(weights)} weights; was it saved from another architecture?"
                )
            variable = weights[position]
            if tuple(variable.shape) != array.shape:
                raise ValueError(
                    f"saved snapshot weight #{position} has shape {array.shape}, but "
                    f"{variable.path!r} has shape {tuple(variable.shape)}"
                )
            entries[id(variable)] = (variable, np.array(array, copy=True))
        self._entries = entries
        self.epoch = epoch

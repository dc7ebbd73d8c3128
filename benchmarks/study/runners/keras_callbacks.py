"""Keras callbacks of the study runner: fixed-depth early stopping and the epoch timeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from tqdm.auto import tqdm

from benchmarks.study.runners.records import timeline_entry
from benchmarks.study.runners.strategies import FixedDepthStop


class FixedDepthStopping(keras.callbacks.Callback):
    """Stops a fixed-depth strategy by ``FixedDepthStop`` and ends ``fit`` on the best weights.

    The same decision as the PyTorch runner's loop, so both frameworks stop alike.

    Args:
        patience: Epochs without a lower validation loss before stopping.
        max_epochs: Epoch budget.
    """

    def __init__(self, patience: int, max_epochs: int) -> None:
        super().__init__()
        self.stopper = FixedDepthStop(patience, max_epochs)
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        improved, stop = self.stopper.step(float((logs or {})["val_loss"]))
        if improved:
            self.best_weights = self.model.get_weights()
        if stop:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class TimelineRecorder(keras.callbacks.Callback):
    """Collects the per-epoch timeline and drives the epoch progress bar.

    Args:
        bar: tqdm bar advanced once per epoch.
        unfrozen: Returns the layers/groups trainable during the current epoch.
    """

    def __init__(self, bar: tqdm, unfrozen: Callable[[], int]) -> None:
        super().__init__()
        self.bar, self.unfrozen = bar, unfrozen
        self.timeline: list[dict[str, Any]] = []
        self._lr, self._unfrozen = 0.0, 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # read at the start: the dynamic callback may swap the optimizer at epoch end
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._unfrozen = self.unfrozen()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.timeline.append(
            timeline_entry(epoch + 1, logs["loss"], logs["val_loss"], self._lr, self._unfrozen)
        )
        self.bar.set_postfix(val_loss=f"{logs['val_loss']:.4f}", unfrozen=self._unfrozen)
        self.bar.update()

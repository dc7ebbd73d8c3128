"""The study's batches as Keras ``PyDataset``s, preprocessed for the backbone."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from benchmarks.study.data.batches import SplitArrays, TrainingData

Preprocess = Callable[[np.ndarray], np.ndarray]


class TrainBatches(keras.utils.PyDataset):
    """One epoch of ``TrainingData`` batches: (preprocessed images, labels, sample weights)."""

    def __init__(self, data: TrainingData, preprocess: Preprocess) -> None:
        super().__init__()
        self.data, self.preprocess = data, preprocess
        self.plan = data.epoch_plan()

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, labels, weights = self.data.train_batch(self.plan[index])
        return self.preprocess(images), labels, weights

    def on_epoch_end(self) -> None:
        self.plan = self.data.epoch_plan()


class EvalBatches(keras.utils.PyDataset):
    """Un-augmented batches of one split, in order."""

    def __init__(self, data: TrainingData, split: SplitArrays, preprocess: Preprocess) -> None:
        super().__init__()
        self.batches = list(data.eval_batches(split))
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.batches[index]
        # keras.applications preprocess_input works in place on float arrays, and the
        # same stored batch is served every epoch (and peeked at by fit)
        return self.preprocess(images.copy()), labels

"""Per-group optimizers: unfrozen_lr_ratio, AdamW exclusions, global clipping, optimizer state.

The references are built by hand from plain Keras: the head's optimizer trains head-only for
two epochs, the weights go back to epoch 1 (the rollback of the unfreeze), and the rest runs
under ``keras.optimizers.MultiOptimizer`` with a fresh optimizer for the unfrozen layer at
``ratio x`` the decayed rate, or under one optimizer for everything.

Scripted values (patience 1, decay 0.5): epoch 1 best, epoch 2 a miss (unfreeze conv2, rates
x0.5, back to epoch 1), epochs 3 and 4 improve, the budget ends on epoch 4.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from dynft_keras import DynamicFineTuning
from dynft_keras.freezing import apply_trainable, group_variables
from dynft_keras.groups import resolve_groups
from keras_helpers import ScriptedMonitor, WeightRecorder, tiny_data, tiny_model, weights_of

LR, RATIO, DECAY = 0.01, 0.1, 0.5
SCRIPT = [1.0, 1.1, 0.9, 0.8]
FIT = {"batch_size": 8, "shuffle": False, "verbose": 0}


def _adamw():
    optimizer = keras.optimizers.AdamW(LR, weight_decay=0.2)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def _dynft_run(optimizer, ratio):
    model, backbone = tiny_model()
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    x, y = tiny_data()
    cb = DynamicFineTuning(
        backbone, patience=1, step=1, decay=DECAY, unfrozen_lr_ratio=ratio, verbose=0
    )
    model.fit(x, y, epochs=len(SCRIPT), callbacks=[ScriptedMonitor(SCRIPT), cb], **FIT)
    return model, cb


def _reference_run(head_optimizer, group_optimizer_for):
    """Epochs 1-2 head-only, back to epoch 1, then conv2 unfrozen under ``group_optimizer_for``."""
    model, backbone = tiny_model()
    groups = resolve_groups(backbone, "layers")
    apply_trainable(backbone, groups, 0)
    model.compile(optimizer=head_optimizer, loss="categorical_crossentropy")
    x, y = tiny_data()
    model.fit(x, y, epochs=1, **FIT)
    best = model.get_weights()
    model.fit(x, y, epochs=2, initial_epoch=1, **FIT)
    model.set_weights(best)
    apply_trainable(backbone, groups, 1)
    model.compile(optimizer=group_optimizer_for(groups[-1]), loss="categorical_crossentropy")
    model.fit(x, y, epochs=4, initial_epoch=2, **FIT)
    return model


def test_unfrozen_groups_train_like_their_own_optimizer_at_ratio_x_the_rate():
    model, cb = _dynft_run(_adamw(), RATIO)

    head = _adamw()

    def split(group):
        head.learning_rate = LR * DECAY
        unfrozen = keras.optimizers.AdamW(LR * DECAY * RATIO, weight_decay=0.2)
        unfrozen.exclude_from_weight_decay(var_names=["bias"])
        paths = {v.path: unfrozen for v in group_variables(group)}
        return keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(head, paths))

    reference = weights_of(_reference_run(head, split))
    final = weights_of(model)
    for path, value in reference.items():
        np.testing.assert_allclose(final[path], value, rtol=1e-5, atol=1e-7, err_msg=path)
    conv2 = model.get_layer("backbone").get_layer("conv2")
    assert (
        np.max(np.abs(final[conv2.kernel.path] - weights_of(tiny_model()[0])[conv2.kernel.path]))
        > 0
    )
    optimizer = model.optimizer
    assert optimizer.learning_rates() == pytest.approx(
        {"head": LR * DECAY, "unfreeze 1": LR * DECAY * RATIO}
    )
    (unfrozen,) = optimizer.group_optimizers
    assert isinstance(unfrozen, keras.optimizers.AdamW) and unfrozen.weight_decay == 0.2
    assert not unfrozen._use_weight_decay(conv2.bias) and unfrozen._use_weight_decay(conv2.kernel)
    # Own step count: 2 epochs of 4 steps since the unfreeze; the head's: all 16 steps.
    assert int(unfrozen.iterations) == 8 and int(optimizer.head.iterations) == 16


@pytest.mark.parametrize(
    "clip", [{"global_clipnorm": 0.05}, {"clipnorm": 0.01}, {"clipvalue": 0.002}], ids=str
)
def test_gradient_clipping_acts_as_in_one_optimizer(clip):
    # SGD keeps no state, so one optimizer over every variable is the exact reference.
    model, _ = _dynft_run(keras.optimizers.SGD(LR * 10, **clip), 1.0)
    reference = weights_of(
        _reference_run(
            keras.optimizers.SGD(LR * 10, **clip),
            lambda group: keras.optimizers.SGD(LR * 10 * DECAY, **clip),
        )
    )
    final = weights_of(model)
    for path, value in reference.items():
        np.testing.assert_allclose(final[path], value, rtol=1e-5, atol=1e-7, err_msg=path)


class _OptimizerRecorder(keras.callbacks.Callback):
    """At each epoch end: the head optimizer's identity, step count and slot values."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, int, list[np.ndarray]]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        head = self.model.optimizer.head
        slots = [np.array(keras.ops.convert_to_numpy(v)) for v in head.variables[1:]]
        self.records.append((id(head), int(head._iterations), slots))


def test_head_optimizer_keeps_steps_ema_and_accumulation_across_unfreezes():
    model, backbone = tiny_model()
    optimizer = keras.optimizers.Adam(LR, use_ema=True, ema_momentum=0.5,
                                      gradient_accumulation_steps=3)  # fmt: skip
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    x, y = tiny_data()  # 4 steps per epoch: accumulation windows straddle the epochs
    before, after = _OptimizerRecorder(), _OptimizerRecorder()
    weights = WeightRecorder()
    cb = DynamicFineTuning(backbone, patience=1, step=1, decay=DECAY, verbose=0)
    model.fit(
        x, y, epochs=4, callbacks=[ScriptedMonitor(SCRIPT), before, weights, cb, after], **FIT
    )
    # Epoch 2's end unfroze conv2: the head's optimizer is the same object, untouched.
    assert before.records[1][0] == after.records[1][0] == after.records[3][0]
    for mine, theirs in zip(before.records[1][2], after.records[1][2], strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert [record[1] for record in after.records] == [4, 8, 12, 16]
    assert any(np.any(slot != 0) for slot in after.records[3][2])
    # The new optimizer started in step with the head's accumulation window (8 % 3 = 2).
    (unfrozen,) = model.optimizer.group_optimizers
    assert int(unfrozen._iterations) == 2 + 8
    # EMA: the averages followed the restore; fit's EMA overwrite was then replaced by the
    # best epoch's weights (epoch 4).
    final = weights_of(model)
    for path, value in weights.epochs[3].items():
        np.testing.assert_array_equal(final[path], value, err_msg=path)

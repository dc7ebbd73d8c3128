"""The model left in the Trainer is the best evaluation's, whatever ends the run: Trainer's
max_steps, EarlyStoppingCallback, dynft's own stop, with and without load_best_model_at_end
(dynft's in-memory best wins; with restore_best_weights=False Trainer's reload decides)."""

from __future__ import annotations

import pytest
import transformers
from dynft_torch.transformers import DynamicFineTuningCallback
from trainer_runs import make_trainer, same_weights, weights

SCORES = [1.0, 1.1, 1.2, 0.9, 1.0, 1.1]  # best at evaluation 4 (step 16); dynft stops at 6


def test_max_steps_ends_on_the_best_evaluation(tmp_path):
    trainer, callback, before = make_trainer(
        "bert",
        tmp_path,
        [1.0, 1.1, 1.2],
        max_steps=10,
        callback=DynamicFineTuningCallback(patience=3),
    )
    trainer.train()
    assert sorted(before.evaluated) == [4, 8, 10]  # the cut epoch is evaluated too
    assert callback.decisions[-1].external_stop and callback.decisions[-1].restore_best
    assert same_weights(weights(trainer.model), before.evaluated[4])


def test_early_stopping_callback_ends_on_the_best_evaluation(tmp_path):
    trainer, callback, before = make_trainer(
        "bert",
        tmp_path,
        [1.0, 0.9, 1.0, 1.1, 1.2],
        before=[transformers.EarlyStoppingCallback(early_stopping_patience=2)],
        callback=DynamicFineTuningCallback(patience=3, step=1),
    )
    trainer.train()
    assert trainer.state.global_step == 16
    assert callback.decisions[-1].external_stop
    assert same_weights(weights(trainer.model), before.evaluated[8])


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_dynft_best_wins_over_load_best_model_at_end(tmp_path, family):
    """Trainer's metric is best at the last evaluation, dynft's at the fourth: the model ends on
    dynft's. For ViT, Trainer's reload is partial (transformers#43701); dynft's is not."""
    trainer, callback, before = make_trainer(
        family,
        tmp_path,
        SCORES,
        other_metrics={"other": [6, 5, 4, 3, 2, 1]},
        metric_for_best_model="other",
        callback=DynamicFineTuningCallback(
            patience=1, step=1, decay=0.5, monitor="score", mode="min"
        ),
        load_best_model_at_end=True,
        save_strategy="epoch",
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-24")
    assert callback.tuner.config.monitor == "eval_score" and callback.decisions[-1].stop
    assert same_weights(weights(trainer.model), before.evaluated[16])


def test_same_monitor_with_load_best_model_at_end(tmp_path):
    trainer, _, before = make_trainer(
        "bert", tmp_path, SCORES, load_best_model_at_end=True, save_strategy="epoch"
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-16")
    assert same_weights(weights(trainer.model), before.evaluated[16])


def test_without_restore_best_weights_trainer_reload_decides(tmp_path):
    options = {"patience": 1, "step": 1, "decay": 0.5, "restore_best_weights": False}
    trainer, _, before = make_trainer(
        "bert",
        tmp_path / "reload",
        SCORES,
        callback=DynamicFineTuningCallback(**options),
        load_best_model_at_end=True,
        save_strategy="epoch",
    )
    trainer.train()
    assert same_weights(weights(trainer.model), before.evaluated[16])

    trainer, _, before = make_trainer(
        "bert", tmp_path / "last", SCORES, callback=DynamicFineTuningCallback(**options)
    )
    trainer.train()
    assert same_weights(weights(trainer.model), before.evaluated[24])


def test_partial_reload_of_trainer_is_an_error(tmp_path):
    trainer, _, _ = make_trainer(
        "vit",
        tmp_path,
        SCORES,
        callback=DynamicFineTuningCallback(patience=1, step=1, restore_best_weights=False),
        load_best_model_at_end=True,
        save_strategy="epoch",
    )
    with pytest.raises(RuntimeError, match=r"load_best_model_at_end did not restore .*43701"):
        trainer.train()

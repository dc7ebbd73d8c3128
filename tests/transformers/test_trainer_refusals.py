"""What the Trainer callback monitors, what it refuses (one clear error, before anything
changes), and the settings it adapts to (a backbone frozen by hand, several eval datasets,
a diverged evaluation)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import transformers
from dynft_torch.trainer_arguments import check_training_arguments, resolve_monitor
from dynft_torch.transformers import DynamicFineTuningCallback
from tiny_transformers import build
from trainer_runs import Examples, Recorder, arguments, make_trainer, same_weights, weights

from dynft_core import FineTuneConfig


def resolved(tmp_path, callback_options=None, **argument_overrides):
    callback = DynamicFineTuningCallback(**(callback_options or {}))
    config = resolve_monitor(
        callback.config,
        callback._explicit_monitor,
        callback._explicit_mode,
        arguments(tmp_path, **argument_overrides),
    )
    return config.monitor, config.direction


def test_monitor_follows_trainer_unless_given(tmp_path):
    assert resolved(tmp_path) == ("eval_loss", "min")
    assert resolved(tmp_path, metric_for_best_model="accuracy") == ("eval_accuracy", "max")
    assert resolved(tmp_path, metric_for_best_model="eval_f1", greater_is_better=False) == (
        "eval_f1",
        "min",
    )
    assert resolved(tmp_path, {"mode": "max"}) == ("eval_loss", "max")
    assert resolved(tmp_path, {"monitor": "accuracy"}, metric_for_best_model="loss") == (
        "eval_accuracy",
        "max",
    )
    config = FineTuneConfig(patience=2, monitor="eval_bleu", mode="max")
    assert resolved(tmp_path, {"config": config}) == ("eval_bleu", "max")
    assert resolved(tmp_path, {"config": FineTuneConfig(patience=2)}) == ("eval_loss", "min")


def test_default_monitor_decides_on_the_evaluation_loss(tmp_path):
    trainer, callback, _ = make_trainer("bert", tmp_path, num_train_epochs=3)
    trainer.train()
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert [d.value for d in callback.decisions[:3]] == losses


def test_several_eval_datasets_decide_on_the_monitored_one(tmp_path):
    datasets = {"first": Examples("bert", 8, seed=2), "second": Examples("bert", 8, seed=3)}
    trainer, callback, _ = make_trainer(
        "bert",
        tmp_path,
        num_train_epochs=3,
        eval_dataset=datasets,
        metric_for_best_model="second_loss",
    )
    trainer.train()
    losses = [e["eval_second_loss"] for e in trainer.state.log_history if "eval_second_loss" in e]
    assert len(losses) == 3
    assert [d.value for d in callback.decisions[:3]] == losses


def test_missing_monitor_is_an_error_and_leaves_the_model_trainable_as_given(tmp_path):
    trainer, _, _ = make_trainer(
        "bert", tmp_path, [1.0], callback=DynamicFineTuningCallback(monitor="nothing", mode="min")
    )
    flags = {name: p.requires_grad for name, p in trainer.model.named_parameters()}
    assert all(flags.values())
    with pytest.raises(KeyError, match=r"monitors 'eval_nothing', but the evaluation at step 4"):
        trainer.train()
    assert {name: p.requires_grad for name, p in trainer.model.named_parameters()} == flags


def test_a_keras_style_val_monitor_names_the_trainer_key(tmp_path):
    callback = DynamicFineTuningCallback(monitor="val_loss")
    trainer, _, _ = make_trainer("bert", tmp_path, None, callback=callback)
    with pytest.raises(KeyError, match=r"monitors 'eval_val_loss'.*Trainer names it 'eval_loss'"):
        trainer.train()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eval_strategy": "no"}, r"eval_strategy='no' never evaluates"),
        ({"auto_find_batch_size": True}, r"auto_find_batch_size=True"),
        ({"optim": "adalomo"}, r"optim='adalomo'.*backward hooks"),
        ({"save_strategy": "epoch", "ratio": 0.5}, r"unfrozen_lr_ratio=0.5 .*could not be resumed"),
        (
            {"load_best_model_at_end": True, "save_strategy": "epoch", "keep_last": True},
            r"restore_best_weights=False with load_best_model_at_end=True",
        ),
    ],
)
def test_refused_settings_fail_when_the_trainer_is_built(tmp_path, overrides, message):
    options = {"unfrozen_lr_ratio": overrides.pop("ratio", 1.0)}
    if overrides.pop("keep_last", False):
        options.update(restore_best_weights=False, monitor="accuracy")
    model = build("bert")
    before = weights(model)
    with pytest.raises(ValueError, match=message):
        make_trainer(
            "bert",
            tmp_path,
            model=model,
            callback=DynamicFineTuningCallback(**options),
            **overrides,
        )
    assert same_weights(weights(model), before)
    assert all(p.requires_grad for p in model.parameters())


def test_fsdp_and_deepspeed_are_refused(tmp_path, monkeypatch):
    config = FineTuneConfig()
    args = arguments(tmp_path)
    deepspeed = dataclasses.replace(args)
    deepspeed.deepspeed_plugin = object()  # what TrainingArguments(deepspeed=...) sets
    with pytest.raises(ValueError, match="does not support DeepSpeed"):
        check_training_arguments(deepspeed, config)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="does not support FSDP"):
        make_trainer("bert", tmp_path)


def test_models_with_adapters_are_refused(tmp_path):
    model = build("bert")
    model._hf_peft_config_loaded = True  # what load_adapter() sets
    with pytest.raises(ValueError, match="does not support PEFT models"):
        make_trainer("bert", tmp_path, model=model)


def test_unknown_and_invalid_options(tmp_path):
    with pytest.raises(TypeError, match="unknown fine-tuning option"):
        DynamicFineTuningCallback(patiense=2)
    with pytest.raises(ValueError, match="decay"):
        DynamicFineTuningCallback(decay=1.5)
    with pytest.raises(ValueError, match="restore_optimizer"):
        DynamicFineTuningCallback(restore_optimizer="yes")
    with pytest.raises(ValueError, match=r"groups must be one of .* got 'block'"):
        DynamicFineTuningCallback(groups="block")
    with pytest.raises(TypeError, match="backbone must be None, a submodule .* got int: 0"):
        DynamicFineTuningCallback(backbone=0)
    with pytest.raises(TypeError, match="resume_from must be None or the path .* got int: 3"):
        DynamicFineTuningCallback(resume_from=3)


def test_a_callback_serves_one_training(tmp_path):
    trainer, callback, _ = make_trainer("bert", tmp_path / "one", [1.0], num_train_epochs=1)
    with pytest.raises(RuntimeError, match="already served a Trainer"):
        make_trainer("bert", tmp_path / "two", callback=callback)
    trainer.train()
    with pytest.raises(RuntimeError, match="already served a Trainer"):
        trainer.train()


def test_an_optimizer_without_the_backbone_is_refused(tmp_path):
    model = build("bert")
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=1e-2)
    trainer, callback, _ = make_trainer("bert", tmp_path, [1.0], model=model)
    trainer.optimizer = optimizer
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match=r"optimizer lacks \d+ backbone parameters"):
        trainer.train()
    assert callback.tuner is None and [p.requires_grad for p in model.parameters()] == flags


def test_a_backbone_frozen_by_hand(tmp_path):
    model = build("bert")
    for parameter in model.bert.parameters():
        parameter.requires_grad_(False)
    trainer, callback, _ = make_trainer("bert", tmp_path / "init", [1.0, 1.1], model=model)
    trainer.train()  # the callback made the groups trainable for Trainer's optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    held = {names[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]}
    grouped = {n for g in callback.tuner.groups for n in g.parameter_names}
    assert grouped <= held
    # the pooler, outside the groups (head), stays as the user left it
    assert set(names.values()) - held == {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert callback.decisions[1].newly_unfrozen == (2,)

    model = build("bert")
    for parameter in model.bert.parameters():
        parameter.requires_grad_(False)
    trainer = transformers.Trainer(
        model=model,
        args=arguments(tmp_path / "late"),
        train_dataset=Examples("bert", 32, seed=1),
        eval_dataset=Examples("bert", 8, seed=2),
    )
    trainer.add_callback(DynamicFineTuningCallback())
    with pytest.raises(ValueError, match="add the callback when building the Trainer"):
        trainer.train()


def test_unsupported_lr_scheduler_is_refused(tmp_path):
    trainer, _, _ = make_trainer("bert", tmp_path, [1.0], lr_scheduler_type="greedy")
    with pytest.raises(ValueError, match="GreedyLR is not one dynft knows"):
        trainer.train()


def test_a_diverged_evaluation_rolls_back_and_resets_the_optimizer(tmp_path):
    after = Recorder()
    trainer, callback, before = make_trainer(
        "bert", tmp_path, [1.0, math.nan, 0.9], num_train_epochs=3, after=[after]
    )
    trainer.train()
    assert callback.decisions[1].diverged and callback.decisions[1].restore_best
    assert same_weights(after.evaluated[8], before.evaluated[4])
    assert before.with_state[8] and not after.with_state[8]  # no NaN moment survives

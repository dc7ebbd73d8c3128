"""DynamicFineTuningCallback inside a real Trainer: decisions per epoch and per evaluation, which
blocks train in each stage, rollbacks, the optimizer's groups and state, BatchNorm, the final
weights, the logged values. Scripted metrics fix the decisions; the checks read the weights."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers
from dynft_torch.transformers import DynamicFineTuningCallback
from trainer_runs import Recorder, changed_groups, make_trainer, same_weights, weights

# patience 1, step 1: unfreeze group 2 at evaluation 2, group 1 at 3, group 0 at 5, stop at 6
SCORES = [1.0, 1.1, 1.2, 0.9, 1.0, 1.1]


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """One epoch-strategy BERT run with SCORES; the recorders before and after the callback."""
    after = Recorder()
    trainer, callback, before = make_trainer(
        "bert", tmp_path_factory.mktemp("bert"), SCORES, after=[after]
    )
    initial = weights(trainer.model)
    trainer.train()
    return trainer, callback, before, after, initial


def test_one_decision_per_epoch_unfreezing_deepest_first(bert_run):
    trainer, callback, before, _, _ = bert_run
    decisions = callback.decisions
    assert [d.value for d in decisions] == SCORES
    assert [d.newly_unfrozen for d in decisions] == [(), (2,), (1,), (), (0,), ()]
    assert [d.lr_factor for d in decisions] == [1.0, 0.5, 0.5, 1.0, 0.5, 1.0]
    assert decisions[-1].stop and not decisions[-1].external_stop
    assert sorted(before.evaluated) == [4, 8, 12, 16, 20, 24]
    assert trainer.state.global_step == 24


def test_each_stage_trains_exactly_the_unfrozen_groups(bert_run):
    _, callback, before, after, initial = bert_run
    steps = sorted(before.evaluated)
    left = [initial] + [after.evaluated[step] for step in steps[:-1]]
    trainable = [()] + [d.trainable_groups for d in callback.decisions[:-1]]
    for step, start, groups in zip(steps, left, trainable, strict=True):
        assert changed_groups(callback, start, before.evaluated[step]) == list(groups), step
        head = "classifier.weight"
        assert not torch.equal(start[head], before.evaluated[step][head]), step


def test_rollbacks_restore_the_best_evaluation_in_memory(bert_run):
    trainer, _, before, after, _ = bert_run
    # evaluations 2 and 3 unfreeze and roll back to evaluation 1; 5 and 6 to evaluation 4
    for step, best in ((8, 4), (12, 4), (20, 16), (24, 16)):
        assert same_weights(after.evaluated[step], before.evaluated[best]), step
    assert same_weights(weights(trainer.model), before.evaluated[16])


def test_frozen_groups_have_no_optimizer_state(bert_run):
    _, callback, before, _, _ = bert_run
    group = {g.index: set(g.parameter_names) for g in callback.tuner.groups}
    assert not before.with_state[8] & (group[0] | group[1])  # only group 2 trains in stage 2
    assert group[2] <= before.with_state[12]
    assert not before.with_state[16] & group[0]
    assert group[0] <= before.with_state[24]


def test_trainer_optimizer_keeps_its_weight_decay_split(bert_run):
    trainer, callback, _, _, _ = bert_run
    model = trainer.model
    decay = set(trainer.get_decay_parameter_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]  # nothing added
    held = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert set(held) == set(names.values())
    for name, weight_decay in held.items():
        assert weight_decay == (0.05 if name in decay else 0.0), name
    deepest = callback.tuner.groups[-1].parameter_names
    assert any(held[n] == 0.05 for n in deepest) and any(held[n] == 0.0 for n in deepest)


def test_decisions_are_logged_with_the_learning_rate(bert_run):
    trainer, callback, _, _, _ = bert_run
    entries = [e for e in trainer.state.log_history if "dynft_decision" in e]
    assert [e["dynft_decision"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in entries] == [4, 8, 12, 16, 20, 24]
    assert [e["dynft_unfrozen"] for e in entries] == [0, 1, 2, 2, 3, 3]
    assert [e["dynft_lr_factor"] for e in entries] == [1.0, 0.5, 0.25, 0.25, 0.125, 0.125]
    rates = [e["learning_rate"] for e in entries]
    assert rates[1] == pytest.approx(0.5 * 0.01 * (24 - 8) / (24 - 2))  # linear decay x 0.5
    assert "group" in callback.tuner.group_table() and "head" in callback.tuner.group_table()


def test_steps_strategy_decides_at_every_evaluation(tmp_path):
    trainer, callback, before = make_trainer(
        "bert",
        tmp_path,
        [1.0, 1.1, 0.9, 1.0, 1.05, 0.8],
        eval_strategy="steps",
        eval_steps=3,
        max_steps=16,
        callback=DynamicFineTuningCallback(patience=2, step=1, decay=0.5),
    )
    trainer.train()
    # Trainer evaluates every 3 steps and once more at max_steps; patience counts evaluations
    assert sorted(before.evaluated) == [3, 6, 9, 12, 15, 16]
    assert [d.newly_unfrozen for d in callback.decisions] == [(), (), (), (), (2,), (), ()]
    assert callback.decisions[-1].external_stop  # max_steps ended the run
    assert same_weights(weights(trainer.model), before.evaluated[16])  # 0.8 is the best


def test_the_evaluation_before_training_is_not_a_decision(tmp_path):
    trainer, callback, before = make_trainer(
        "bert", tmp_path, [5.0, 1.0, 1.1], num_train_epochs=2, eval_on_start=True
    )
    trainer.train()
    assert sorted(before.evaluated) == [0, 4, 8]
    assert [d.value for d in callback.decisions if not d.external_stop] == [1.0, 1.1]


def test_logged_messages_and_dynft_unfrozen_in_logs(tmp_path, caplog):
    printed = []

    class Logs(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            printed.append(dict(logs))

    trainer, _, _ = make_trainer(
        "bert", tmp_path, [1.0, 1.1], num_train_epochs=2, after=[Logs()], log_level="info"
    )
    logger = logging.getLogger("transformers.dynft")
    logger.addHandler(caplog.handler)
    try:
        trainer.train()
    finally:
        logger.removeHandler(caplog.handler)
        transformers.utils.logging.set_verbosity_warning()
    messages = [r.getMessage() for r in caplog.records if r.name == "transformers.dynft"]
    assert any("unfroze group 2" in m for m in messages)
    assert any("monitoring eval_score (min)" in m for m in messages)
    evaluations = [logs for logs in printed if "eval_score" in logs]
    assert [logs["dynft_unfrozen"] for logs in evaluations] == [0, 0]  # before each decision
    assert printed[-1]["dynft_unfrozen"] == 1  # the train summary


def test_resnet_batchnorm_stays_frozen_in_inference_mode(tmp_path):
    trainer, callback, before = make_trainer("resnet", tmp_path, SCORES)
    initial = weights(trainer.model)
    trainer.train()
    tuner = callback.tuner
    frozen = tuner.batchnorm.buffer_names() | tuner.batchnorm.parameter_names()
    assert any(n.endswith("running_var") for n in frozen) and tuner.batchnorm.parameter_names()
    for step, evaluated in before.evaluated.items():
        for name in frozen:
            assert torch.equal(evaluated[name], initial[name]), (step, name)
    # the last stage trains groups 1-3 (4 groups: unfrozen at evaluations 2, 3 and 5)
    last = before.evaluated[24]
    assert changed_groups(callback, initial, last) == [1, 2, 3]
    unfrozen = [n for i in (1, 2, 3) for n in tuner.trainable_parameter_names(tuner.groups[i])]
    assert all(not torch.equal(last[n], initial[n]) for n in unfrozen if n.endswith("weight"))
    assert same_weights(weights(trainer.model), before.evaluated[16])


def test_accumulation_and_bf16_take_the_same_decisions(tmp_path):
    runs = {}
    for name, overrides in {
        "plain": {},
        "accumulated": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
        "bf16": {"bf16": True},
    }.items():
        trainer, callback, before = make_trainer(
            "bert", tmp_path / name, SCORES[:4], num_train_epochs=4, **overrides
        )
        initial = weights(trainer.model)
        trainer.train()
        runs[name] = callback, before, initial, trainer
    assert runs["bf16"][3].accelerator.mixed_precision == "bf16"
    reference = [d.to_dict() for d in runs["plain"][0].decisions]
    for name, (callback, before, initial, trainer) in runs.items():
        assert [d.to_dict() for d in callback.decisions] == reference, name
        assert sorted(before.evaluated) == [4, 8, 12, 16], name
        assert set(before.with_grad.values()) == {0}, name  # decisions see complete steps
        assert changed_groups(callback, initial, before.evaluated[12]) == [2], name
        assert changed_groups(callback, initial, before.evaluated[16]) == [1, 2], name
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), name
        assert same_weights(weights(trainer.model), before.evaluated[16]), name

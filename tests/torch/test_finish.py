"""The run ends on the best weights however the loop ends: finish(), a with block (also on an
exception or KeyboardInterrupt), and a loud warning when neither happened."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import TinyNet, make_data, state_copy, train_epoch

TESTS = Path(__file__).resolve().parent
VALUES = (1.0, 0.5, 0.7, 0.8)  # best at epoch 2, then worse: no stop with patience 5


def run(tuner, model, optimizer, values=VALUES):
    data = make_data()
    states = []
    for value in values:
        train_epoch(model, optimizer, data)
        tuner.step(value)
        states.append(state_copy(model))
    train_epoch(model, optimizer, data)  # trained after the last step: not the best either
    return states


def build(**options):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, optimizer, DynamicFineTuner(model, optimizer, model.backbone, **options)


def assert_model_is(model, state):
    for name, tensor in state_copy(model).items():
        assert torch.equal(tensor, state[name]), name


def test_finish_restores_the_best_weights_and_is_idempotent():
    model, optimizer, tuner = build()
    states = run(tuner, model, optimizer)
    decision = tuner.finish("the loop ended")
    assert decision.external_stop and decision.restore_best and decision.epoch == 4
    assert "the loop ended after 4 epochs: restored best of epoch 2" in decision.reason
    assert_model_is(model, states[1])
    again = tuner.finish()
    assert not again.restore_best and tuner.scheduler.history[-1] is decision
    with pytest.raises(RuntimeError, match="after training stopped at epoch 4"):
        tuner.step(0.1)


def test_restore_best_weights_false_keeps_the_last_weights():
    model, optimizer, tuner = build(restore_best_weights=False)
    run(tuner, model, optimizer)
    last = state_copy(model)
    decision = tuner.finish()
    assert not decision.restore_best and "kept the last weights" in decision.reason
    assert_model_is(model, last)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, ValueError])
def test_a_with_block_finishes_on_exit_and_on_interruption(interruption):
    model, optimizer, tuner = build()
    with pytest.raises(interruption), tuner:
        states = run(tuner, model, optimizer)
        raise interruption()
    assert tuner.scheduler.stopped
    assert f"interrupted by {interruption.__name__}" in tuner.scheduler.history[-1].reason
    assert_model_is(model, states[1])

    model, optimizer, tuner = build()
    with tuner:
        states = run(tuner, model, optimizer)
    assert "the with block ended" in tuner.scheduler.history[-1].reason
    assert_model_is(model, states[1])


def test_no_budget_by_default_and_max_epochs_stops():
    _, _, tuner = build()
    assert tuner.scheduler.max_epochs is None
    model, optimizer, tuner = build(max_epochs=3)
    data = make_data()
    decisions = []
    for value in VALUES[:3]:
        train_epoch(model, optimizer, data)
        decisions.append(tuner.step(value))
    assert decisions[-1].stop and decisions[-1].restore_best


def test_monitor_name_sets_the_direction():
    _, _, tuner = build(monitor="val_accuracy")
    assert tuner.scheduler.mode == "max"
    assert tuner.step(0.5).improved and tuner.step(0.7).improved and not tuner.step(0.6).improved
    _, _, tuner = build(mode="max")
    assert tuner.scheduler.mode == "max"
    with pytest.raises(TypeError, match=r"unknown fine-tuning option\(s\) \['patiense'\]"):
        build(patiense=3)


def test_a_discarded_unfinished_tuner_warns_but_not_when_finished_or_on_best():
    model, optimizer, tuner = build()
    run(tuner, model, optimizer)
    with pytest.warns(
        RuntimeWarning,
        match=r"discarded .* after 4 epochs without stopping or "
        r"finish\(\): .* not the best-validation weights of epoch 2",
    ):
        del tuner
        gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, optimizer, tuner = build()
        run(tuner, model, optimizer)
        tuner.finish()
        del tuner
        gc.collect()
        model, optimizer, tuner = build()
        tuner.step(1.0)  # the model holds the best weights: nothing to warn about
        del tuner
        gc.collect()
        model, optimizer, tuner = build(restore_best_weights=False)
        run(tuner, model, optimizer)
        del tuner
        gc.collect()


def test_an_unfinished_tuner_warns_at_interpreter_exit():
    script = textwrap.dedent(
        """
        import torch
        from dynft_torch import DynamicFineTuner
        from tiny_models import TinyNet, make_data, train_epoch
        model = TinyNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        tuner = DynamicFineTuner(model, optimizer, model.backbone)
        for value in (1.0, 2.0):
            train_epoch(model, optimizer, make_data())
            tuner.step(value)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=TESTS, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning: dynft: a DynamicFineTuner was discarded" in result.stderr
    assert "not the best-validation weights of epoch 1" in result.stderr

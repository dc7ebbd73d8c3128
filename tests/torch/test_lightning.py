"""The Lightning callback in one process: decisions, the final weights however the fit ends,
the Trainer's budget, and the clear errors that replace silent no-ops."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")
from dynft_torch.lightning import DynamicFineTuning  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, Timer  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402
from lightning_models import (  # noqa: E402
    OPTIONS,
    ScriptedModule,
    fit,
    loaders,
    trainer,
)
from tiny_models import assert_states_equal, state_copy  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


def head_only_adam(module):
    return torch.optim.Adam(module.net.head.parameters(), lr=0.01)


def test_one_decision_per_validation_stops_and_ends_on_the_best(tmp_path):
    module = ScriptedModule(optimizer=head_only_adam)
    run, callback = fit(module, tmp_path, max_epochs=10)
    decisions = callback.decisions
    assert [d.newly_unfrozen for d in decisions] == [(), (2, 3), (), (0, 1), (), ()]
    assert decisions[-1].stop and run.current_epoch == 6
    optimizer = run.optimizers[0]
    assert len(optimizer.param_groups) == 3  # the head's and one per unfreeze
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * 0.81] * 3)
    assert callback.tuner.scheduler.best_epoch == 5
    assert_states_equal(module.state_dict(), callback.tuner.snapshot.tensors, None)


class StateBeforeFinish(pl.Callback):
    """Listed before DynamicFineTuning: the weights as the fit left them, before the finish."""

    state = None

    def on_train_end(self, trainer, pl_module):
        self.state = state_copy(pl_module)

    def on_exception(self, trainer, pl_module, exception):
        self.state = state_copy(pl_module)


class StepClock(Timer):
    """``max_time``'s Timer with a clock that advances one second per training batch."""

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        self.trainer = trainer

    def time_elapsed(self, stage="train"):
        return float(self.trainer.global_step)


class RaiseAt(pl.Callback):
    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise self.error


ENDINGS = {  # Trainer settings, other callbacks, what fit raises
    "dynft's stop": lambda: ({}, [], None),
    "Trainer max_epochs": lambda: ({"max_epochs": 4}, [], None),
    "EarlyStopping": lambda: ({}, [EarlyStopping("score", patience=1)], None),
    "max_steps": lambda: ({"max_steps": 7}, [], None),
    "max_time": lambda: ({}, [StepClock(timedelta(seconds=7))], None),
    "an error": lambda: ({}, [RaiseAt(7, ValueError("boom"))], ValueError),
    "KeyboardInterrupt": lambda: ({}, [RaiseAt(7, KeyboardInterrupt())], SystemExit),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_the_fit_ends_on_the_best_weights_however_it_ends(tmp_path, ending):
    settings, callbacks, raises = ENDINGS[ending]()
    before = StateBeforeFinish()
    module = ScriptedModule()
    callback = DynamicFineTuning("net.backbone", **OPTIONS)
    run = trainer([before, callback, *callbacks], tmp_path, **{"max_epochs": 10, **settings})
    if raises is None:
        run.fit(module, *loaders())
    else:
        with pytest.raises(raises):  # Lightning turns KeyboardInterrupt into sys.exit(1)
            run.fit(module, *loaders())
    scheduler = callback.tuner.scheduler
    assert scheduler.stopped and scheduler.best_epoch is not None
    best = callback.tuner.snapshot.tensors
    assert_states_equal(module.state_dict(), best, None)
    assert any(not torch.equal(before.state[n], t) for n, t in best.items())  # it did restore


def test_a_preemption_keeps_the_run_resumable_instead_of_finishing(tmp_path):
    before = StateBeforeFinish()
    module = ScriptedModule()
    callback = DynamicFineTuning("net.backbone", **OPTIONS)
    run = trainer([before, callback, RaiseAt(7, SIGTERMException())], tmp_path, max_epochs=10)
    with pytest.raises(SIGTERMException):
        run.fit(module, *loaders())
    assert not callback.tuner.scheduler.stopped and callback.tuner.scheduler.epoch == 3
    assert_states_equal(module.state_dict(), before.state)


def test_restore_best_weights_false_keeps_the_last_weights(tmp_path):
    before = StateBeforeFinish()
    module = ScriptedModule()
    callback = DynamicFineTuning("net.backbone", **OPTIONS, restore_best_weights=False)
    trainer([before, callback], tmp_path, max_epochs=10).fit(module, *loaders())
    assert callback.decisions[-1].stop and "last weights" in callback.decisions[-1].reason
    assert_states_equal(module.state_dict(), before.state)
    assert any(
        not torch.equal(module.state_dict()[n], t)
        for n, t in callback.tuner.snapshot.tensors.items()
    )


def test_the_budget_comes_from_the_trainer(tmp_path):
    _, callback = fit(ScriptedModule(), tmp_path, max_epochs=4)
    assert callback.tuner.scheduler.max_epochs == 4
    assert "epoch budget of 4 reached" in callback.decisions[-1].reason

    with pytest.warns(UserWarning, match="max_epochs=20 but the framework stops after 3 epochs"):
        _, callback = fit(ScriptedModule(), tmp_path, options={"max_epochs": 20}, max_epochs=3)
    assert callback.tuner.scheduler.max_epochs == 20 and callback.decisions[-1].external_stop

    _, callback = fit(ScriptedModule(), tmp_path, max_epochs=-1, max_steps=6)
    assert callback.tuner.scheduler.max_epochs is None
    assert len(callback.decisions) == 4 and callback.decisions[-1].external_stop


def test_validation_every_two_epochs_counts_validations(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dynft_torch.lightning")
    module = ScriptedModule(steps_per_validation=4)
    _, callback = fit(module, tmp_path, max_epochs=8, check_val_every_n_epoch=2)
    assert callback.tuner.scheduler.max_epochs == 4  # validations in 8 epochs
    assert [d.newly_unfrozen for d in callback.decisions] == [(), (2, 3), (), (0, 1)]
    notes = [r.message for r in caplog.records if "count validations" in r.message]
    assert notes == [
        "DynamicFineTuning: validation runs every 2 epochs; patience and max_epochs count "
        "validations, and each validation takes one decision"
    ]


def empty_val_loader():
    images = torch.zeros(0, 3, 12, 12)
    return DataLoader(TensorDataset(images, images[:, 0, 0, 0].long()), batch_size=4)


NO_VALIDATION = {
    "no val dataloader": ({}, "no val dataloader was given"),
    "limit_val_batches=0": ({"limit_val_batches": 0}, "limit_val_batches=0"),
    "validation beyond max_epochs, sanity steps only": (
        {"check_val_every_n_epoch": 5, "max_epochs": 3, "num_sanity_val_steps": 2},
        "check_val_every_n_epoch=5 is beyond max_epochs=3",
    ),
    "an empty val dataloader": ({}, "the val dataloader has no batch"),
}


@pytest.mark.parametrize("case", list(NO_VALIDATION))
def test_a_fit_without_validation_is_refused_and_changes_nothing(tmp_path, case):
    settings, message = NO_VALIDATION[case]
    module = ScriptedModule()
    run = trainer([DynamicFineTuning("net.backbone", **OPTIONS)], tmp_path, **settings)
    train, val = loaders()
    val = {"no val dataloader": None, "an empty val dataloader": empty_val_loader()}.get(case, val)
    with pytest.raises(ValueError, match=message):
        run.fit(module, train, val)
    assert all(p.requires_grad for p in module.parameters())
    assert all(m.training for m in module.modules())


def test_a_missing_monitor_names_the_logged_keys(tmp_path):
    module = ScriptedModule(log_key="acc")
    with pytest.raises(
        RuntimeError, match=r"monitors 'score' but validation logged only \['acc'\]"
    ):
        fit(module, tmp_path)
    assert all(p.requires_grad for p in module.parameters())


def test_an_optimizer_without_trainable_parameters_is_refused(tmp_path):
    module = ScriptedModule(
        optimizer=lambda m: torch.optim.SGD(m.net.backbone.parameters(), lr=0.1)
    )
    with pytest.raises(ValueError, match="holds none of the .* trainable parameters"):
        fit(module, tmp_path)
    assert all(p.requires_grad for p in module.parameters())


def test_a_reused_callback_is_refused_and_changes_nothing(tmp_path):
    module = ScriptedModule()
    run, callback = fit(module, tmp_path, max_epochs=2)
    flags = [p.requires_grad for p in module.parameters()]
    history = list(callback.decisions)
    with pytest.raises(RuntimeError, match="already used by a fit; create a new one"):
        trainer([callback], tmp_path, max_epochs=4).fit(module, *loaders())
    assert [p.requires_grad for p in module.parameters()] == flags
    assert callback.decisions == history


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="decay must be a number with 0 <= decay < 1, got 1.0"):
        DynamicFineTuning(decay=1.0)
    with pytest.raises(TypeError, match=r"unknown fine-tuning option\(s\) \['patiense'\]"):
        DynamicFineTuning(patiense=3)
    with pytest.raises(ValueError, match="mode='auto' cannot tell whether 'objective'"):
        DynamicFineTuning(monitor="objective")
    with pytest.raises(ValueError, match="optimizer_index"):
        DynamicFineTuning(optimizer_index=-1)
    with pytest.raises(TypeError, match="param_group_fn must be callable"):
        DynamicFineTuning(param_group_fn="weight_decay")
    with pytest.raises(ValueError, match=r"groups must be one of .* got 'layer'"):
        DynamicFineTuning(groups="layer")
    with pytest.raises(TypeError, match="backbone must be None, a submodule .* got int: 3"):
        DynamicFineTuning(backbone=3)


def test_optimizer_index_beyond_the_optimizers_is_refused(tmp_path):
    callback = DynamicFineTuning("net.backbone", **OPTIONS, optimizer_index=1)
    with pytest.raises(
        ValueError, match=r"optimizer_index=1 but configure_optimizers\(\) returned 1"
    ):
        trainer([callback], tmp_path).fit(ScriptedModule(), *loaders())

"""Lightning checkpoints with DynamicFineTuning: what each one holds, resuming from them, and
the checkpoints a resume refuses."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")
from dynft_torch.lightning import AtomicCheckpointIO, DynamicFineTuning  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import SingleDeviceStrategy  # noqa: E402
from lightning_models import (  # noqa: E402
    OPTIONS,
    ScriptedModule,
    WeightsAtValidation,
    fit,
    loaders,
    trainer,
)
from tiny_models import assert_states_equal, state_copy  # noqa: E402

from dynft_core import ResumeMismatchError  # noqa: E402

STATE_KEY = "DynamicFineTuning"


def every_checkpoint(folder, **settings) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=folder, filename="{epoch}-{step}", save_top_k=-1, every_n_epochs=1, **settings
    )


def read(path):
    return torch.load(path, weights_only=True)


def by_step(folder):
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ckpt")]
    return sorted(files, key=lambda f: read(f)["global_step"])


CADENCES = {  # Trainer settings, ModelCheckpoint settings, batches per epoch
    "saved at the train epoch end": ({}, {}, 2),
    "saved at the validation end": ({}, {"save_on_train_epoch_end": False}, 2),
    "two validations per epoch": ({"val_check_interval": 0.5}, {}, 4),
}


@pytest.mark.parametrize("cadence", list(CADENCES))
def test_each_checkpoint_holds_its_validations_weights_and_the_decision_after_it(tmp_path, cadence):
    settings, checkpoint_settings, batches = CADENCES[cadence]
    probe = WeightsAtValidation()
    module = ScriptedModule()
    _, callback = fit(
        module,
        tmp_path,
        [probe, every_checkpoint(tmp_path / "ckpt", **checkpoint_settings)],
        data=loaders(batches),
        max_epochs=6 * 2 // (batches // 2),
        **settings,
    )
    decisions = callback.decisions
    files = by_step(tmp_path / "ckpt")
    assert len(files) == len(probe.states) == 6 and [d.stop for d in decisions][-1]
    for index, path in enumerate(files):
        saved = read(path)
        state = saved["callbacks"][STATE_KEY]
        assert state["validations"] == state["tuner"]["scheduler"]["epoch"] == index + 1
        # the weights this validation measured, not a rolled-back copy under its name
        assert_states_equal(saved["state_dict"], probe.states[index])
        rollback = decisions[index].restore_best
        assert state["pending_restore"] == ("rollback" if rollback else None)
        if decisions[index].newly_unfrozen:
            best = state["tuner"]["snapshot"]
            assert any(not torch.equal(saved["state_dict"][n], t) for n, t in best.items())
            # and the optimizer already holds the decayed rate
            assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(
                0.05 * 0.9 ** sum(1 for d in decisions[: index + 1] if d.newly_unfrozen)
            )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, with a checkpoint after every epoch (two writers)."""
    root = tmp_path_factory.mktemp("straight")
    module = ScriptedModule()
    callbacks = [
        every_checkpoint(root / "epoch_end"),
        # a second writer needs another state key: monitor (it still saves every epoch)
        every_checkpoint(root / "validation_end", monitor="score", save_on_train_epoch_end=False),
    ]
    _, callback = fit(module, root, callbacks, max_epochs=8)
    return root, state_copy(module), callback.decisions


def resume_from(path, root, **settings):
    module = ScriptedModule(seed=1)  # other initial weights: all must come from the file
    _, callback = fit(module, root, ckpt_path=path, **{"max_epochs": 8, **settings})
    return module, callback


@pytest.mark.parametrize("folder", ["epoch_end", "validation_end"])
@pytest.mark.parametrize("epoch", [1, 2])  # a rollback pending (epoch 1: decision 2), or none
def test_resuming_ends_with_the_uninterrupted_runs_weights_and_decisions(
    tmp_path, straight, folder, epoch
):
    root, final, decisions = straight
    path = root / folder / f"epoch={epoch}-step={2 * (epoch + 1)}.ckpt"
    module, callback = resume_from(path, tmp_path)
    assert callback.decisions == decisions
    assert_states_equal(state_copy(module), final)


class LateRestore(SingleDeviceStrategy):
    """A strategy that loads the checkpoint after on_fit_start, as DeepSpeed and FSDP do."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


def test_a_strategy_restoring_after_setup_still_applies_the_saved_state(tmp_path, straight):
    root, final, decisions = straight
    strategy = LateRestore(device=torch.device("cpu"))
    module, callback = resume_from(root / "epoch_end" / "epoch=1-step=4.ckpt", tmp_path,
                                   strategy=strategy)  # fmt: skip
    assert callback.decisions == decisions
    assert_states_equal(state_copy(module), final)


class SaveDuringValidation(pl.Callback):
    """Listed before DynamicFineTuning: writes a checkpoint before dynft decides."""

    def __init__(self, path) -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            trainer.save_checkpoint(self.path)


def test_a_checkpoint_written_before_the_decision_is_refused(tmp_path):
    path = tmp_path / "early.ckpt"
    module = ScriptedModule()
    callback = DynamicFineTuning("net.backbone", **OPTIONS)
    trainer([SaveDuringValidation(path), callback], tmp_path, max_epochs=4).fit(module, *loaders())
    fresh = ScriptedModule(seed=1)
    with pytest.raises(ResumeMismatchError) as error:
        fit(fresh, tmp_path, ckpt_path=path)
    message = str(error.value)
    assert "dynft's saved state is at epoch 2 but the Lightning checkpoint" in message
    assert "resumes after epoch 3" in message and "before DynamicFineTuning decided" in message
    assert all(p.requires_grad for p in fresh.parameters())


def test_a_checkpoint_without_dynft_state_is_refused(tmp_path):
    folder = tmp_path / "plain"
    run = trainer([every_checkpoint(folder)], tmp_path, max_epochs=2)
    run.fit(ScriptedModule(), *loaders())
    with pytest.raises(ResumeMismatchError, match="holds no DynamicFineTuning state"):
        fit(ScriptedModule(), tmp_path, ckpt_path=folder / "epoch=1-step=4.ckpt")


def test_a_finished_run_cannot_be_resumed(tmp_path):
    folder = tmp_path / "ckpt"
    fit(ScriptedModule(), tmp_path, [ModelCheckpoint(folder, save_last=True)], max_epochs=10)
    with pytest.raises(RuntimeError, match="already ended after 6 validations"):
        fit(ScriptedModule(), tmp_path, ckpt_path=folder / "last.ckpt", max_epochs=12)


def test_a_bad_state_names_the_file_and_the_key_and_changes_nothing(tmp_path, straight):
    root, _, _ = straight
    checkpoint = read(root / "epoch_end" / "epoch=2-step=6.ckpt")
    checkpoint["callbacks"][STATE_KEY]["pending_restore"] = "later"
    path = tmp_path / "bad.ckpt"
    torch.save(checkpoint, path)
    module = ScriptedModule(seed=1)
    with pytest.raises(ValueError, match=r"bad.ckpt: invalid DynamicFineTuning state: "):
        fit(module, tmp_path, ckpt_path=path)
    assert all(p.requires_grad for p in module.parameters())

    checkpoint["callbacks"][STATE_KEY]["pending_restore"] = "rollback"  # epoch 3 improved
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="'pending_restore' is 'rollback' but the last decision"):
        fit(ScriptedModule(seed=1), tmp_path, ckpt_path=path)


def test_a_resumed_fit_takes_the_new_budget(tmp_path, straight):
    root, _, _ = straight
    path = root / "epoch_end" / "epoch=2-step=6.ckpt"
    trace = (1.0, 1.1, 0.9, 1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    module = ScriptedModule(trace=trace)
    _, callback = fit(module, tmp_path, ckpt_path=path, max_epochs=12)
    assert callback.tuner.scheduler.max_epochs == 12 and len(callback.decisions) == 12
    assert "epoch budget of 12 reached" in callback.decisions[-1].reason
    with pytest.raises(ValueError, match="after 3 validations, beyond this fit's budget of 2"):
        fit(ScriptedModule(), tmp_path, ckpt_path=path, max_epochs=2)


def test_atomic_checkpoint_io_and_the_warning_for_a_temp_folder_elsewhere(tmp_path, monkeypatch):
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")
    with pytest.warns(UserWarning, match="another filesystem: the move is a copy"):
        fit(ScriptedModule(), tmp_path, [every_checkpoint(tmp_path / "a")], max_epochs=1)
    probe = WeightsAtValidation()
    fit(ScriptedModule(), tmp_path, [probe, every_checkpoint(tmp_path / "b")], max_epochs=2,
        plugins=[AtomicCheckpointIO()])  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"]  # no temporary file left
    for index, name in enumerate(names):
        saved = read(tmp_path / "b" / name)
        assert_states_equal(saved["state_dict"], probe.states[index])
        assert saved["callbacks"][STATE_KEY]["validations"] == index + 1

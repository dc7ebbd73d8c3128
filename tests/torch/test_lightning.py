"""The Lightning callback in one process: decisions, stop, checkpoint resume, clear errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TinyNet, make_data
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from dynft_torch.lightning import DynamicFineTuning  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

# patience 1, step 2 over 4 groups: unfreeze at epochs 2 and 4, stop at 6 (plateau, all unfrozen)
TRACE = (1.0, 1.1, 0.9, 1.0, 0.8, 0.85)


class ScriptedModule(pl.LightningModule):
    """TinyNet trained for real; validation logs a scripted score."""

    def __init__(self, log_key: str = "score") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyNet()
        self.log_key = log_key

    def training_step(self, batch, batch_index):
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_index):
        self.log(self.log_key, TRACE[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.head.parameters(), lr=0.01)


def fit(module, epochs, tmp_path, ckpt_path=None):
    images, labels = make_data(n=16, seed=3)
    callback = DynamicFineTuning(monitor="score", backbone="net.backbone", patience=1, step=2)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.fit(
        module,
        DataLoader(TensorDataset(images, labels), batch_size=8),
        DataLoader(TensorDataset(images[:4], labels[:4]), batch_size=4),
        ckpt_path=ckpt_path,
    )
    return trainer, callback


def test_callback_follows_the_trace_stops_and_restores_best(tmp_path):
    module = ScriptedModule()
    trainer, callback = fit(module, 10, tmp_path)
    assert [d.newly_unfrozen for d in callback.decisions] == [(), (2, 3), (), (0, 1), (), ()]
    assert callback.decisions[-1].stop and trainer.current_epoch == len(TRACE)
    assert len(trainer.optimizers[0].param_groups) == 3  # head + two added param groups
    assert trainer.optimizers[0].param_groups[2]["lr"] == pytest.approx(0.01 * 0.9**2)
    snapshot = callback.tuner.snapshot.tensors
    for name, tensor in snapshot.items():  # the final model is the best epoch (5)
        assert torch.equal(module.state_dict()[name], tensor), name


def test_checkpoint_resume_matches_the_straight_run(tmp_path):
    straight = ScriptedModule()
    fit(straight, 5, tmp_path / "a")

    first = ScriptedModule()
    trainer, _ = fit(first, 3, tmp_path / "b")
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = ScriptedModule()
    _, callback = fit(resumed, 5, tmp_path / "c", ckpt_path=tmp_path / "mid.ckpt")
    history = callback.tuner.scheduler.history
    assert [d.epoch for d in callback.decisions] == [4, 5]
    assert [d.newly_unfrozen for d in history] == [(), (2, 3), (), (0, 1), ()]
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_missing_monitor_names_the_logged_keys(tmp_path):
    with pytest.raises(
        RuntimeError, match=r"monitors 'score' but validation logged only \['acc'\]"
    ):
        fit(ScriptedModule(log_key="acc"), 2, tmp_path)


def test_invalid_options_fail_at_construction():
    with pytest.raises(ValueError, match="decay must be a number with 0 <= decay < 1, got 1.0"):
        DynamicFineTuning(decay=1.0)

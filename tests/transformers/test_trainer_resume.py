"""trainer.train(resume_from_checkpoint=...) from any checkpoint-N continues with the same
decisions and bit-identical weights; a dynft state that does not belong to the checkpoint, or a
checkpoint Trainer did not restore completely, is an error before anything changes."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers
from dynft_torch.transformers import DynamicFineTuningCallback
from trainer_runs import make_trainer, same_weights, weights

from dynft_core import ResumeMismatchError

SCORES = [1.0, 1.1, 1.2, 0.9, 1.0, 1.1, 1.2]


def straight_run(family, folder, **overrides):
    trainer, callback, _ = make_trainer(family, folder, SCORES, **overrides)
    trainer.train()
    return weights(trainer.model), [d.to_dict() for d in callback.decisions]


def copy_checkpoints(source, target, up_to: int) -> None:
    for checkpoint in source.glob("checkpoint-*"):
        if int(checkpoint.name.rpartition("-")[2]) <= up_to:
            shutil.copytree(checkpoint, target / checkpoint.name)


def resumed_trainer(family, folder, evaluations_done: int, **overrides):
    """A fresh Trainer and callback in ``folder``, its metric script past the done evaluations."""
    return make_trainer(family, folder, SCORES[evaluations_done:], **overrides)


@pytest.fixture(scope="module")
def bert_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert_straight")
    final, decisions = straight_run("bert", folder, save_strategy="epoch")
    return folder, final, decisions


@pytest.mark.parametrize("resume_step", [8, 12, 20])
def test_bert_resume_at_epoch_boundaries_is_identical(bert_checkpoints, tmp_path, resume_step):
    folder, final, decisions = bert_checkpoints
    copy_checkpoints(folder, tmp_path, resume_step)
    trainer, callback, before = resumed_trainer(
        "bert", tmp_path, resume_step // 4, save_strategy="epoch"
    )
    trainer.train(resume_from_checkpoint=True)
    assert min(before.evaluated) == resume_step + 4  # no decision twice
    assert [d.to_dict() for d in callback.decisions] == decisions
    assert same_weights(weights(trainer.model), final)


def test_resnet_resume_mid_epoch_is_identical(tmp_path):
    steps = {"eval_strategy": "steps", "eval_steps": 3, "save_strategy": "steps", "save_steps": 3}
    final, decisions = straight_run("resnet", tmp_path / "straight", max_steps=18, **steps)
    copy_checkpoints(tmp_path / "straight", tmp_path, 9)  # step 9: in the third epoch
    trainer, callback, _ = resumed_trainer("resnet", tmp_path, 3, max_steps=18, **steps)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-9"))
    assert [d.to_dict() for d in callback.decisions] == decisions
    assert any(d["newly_unfrozen"] for d in decisions[3:])  # unfreezes after the resume
    assert same_weights(weights(trainer.model), final)


def test_resume_from_a_checkpoint_outside_output_dir(bert_checkpoints, tmp_path):
    folder, final, decisions = bert_checkpoints
    copy_checkpoints(folder, tmp_path / "elsewhere", 12)
    callback = DynamicFineTuningCallback(
        patience=1, step=1, decay=0.5, resume_from=tmp_path / "elsewhere" / "checkpoint-12"
    )
    trainer, _, _ = resumed_trainer(
        "bert", tmp_path / "output", 3, callback=callback, save_strategy="epoch"
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "elsewhere" / "checkpoint-12"))
    assert [d.to_dict() for d in callback.decisions] == decisions
    assert same_weights(weights(trainer.model), final)


def refused_resume(folder, **overrides):
    trainer, callback, _ = resumed_trainer("bert", folder, 3, save_strategy="epoch", **overrides)
    initial = {n: p.requires_grad for n, p in trainer.model.named_parameters()}
    return trainer, callback, initial


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("no_state", FileNotFoundError, r"dynft_state.pt does not exist.*resume_from="),
        ("state_of_step_8", ValueError, r"written at step 8 but Trainer resumes at step 12"),
        ("log_of_two_decisions", ResumeMismatchError, r"epoch 3 but the trainer_state.json"),
        ("no_optimizer_state", RuntimeError, r"did not load its optimizer.pt and scheduler.pt"),
        ("other_options", ValueError, r"other options \(patience=1, now 2"),
        ("other_groups", ValueError, r"groups that differ from this tuner's"),
    ],
)
def test_mismatched_resumes_are_refused(bert_checkpoints, tmp_path, damage, error, message):
    folder, _, _ = bert_checkpoints
    copy_checkpoints(folder, tmp_path, 12)
    checkpoint = tmp_path / "checkpoint-12"
    overrides = {}
    if damage == "no_state":
        (checkpoint / "dynft_state.pt").unlink()
    elif damage == "state_of_step_8":
        shutil.copy(tmp_path / "checkpoint-8" / "dynft_state.pt", checkpoint / "dynft_state.pt")
    elif damage == "log_of_two_decisions":
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        last = max(i for i, e in enumerate(state["log_history"]) if "dynft_decision" in e)
        del state["log_history"][last]
        (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    elif damage == "no_optimizer_state":
        (checkpoint / "optimizer.pt").unlink()
        (checkpoint / "scheduler.pt").unlink()
    elif damage == "other_options":
        overrides["callback"] = DynamicFineTuningCallback(patience=2, step=1, decay=0.5)
    else:
        overrides["callback"] = DynamicFineTuningCallback(
            patience=1, step=1, decay=0.5, groups="modules"
        )
    trainer, callback, initial = refused_resume(tmp_path, **overrides)
    with pytest.raises(error, match=message):
        trainer.train(resume_from_checkpoint=True)
    assert callback.tuner is None
    assert {n: p.requires_grad for n, p in trainer.model.named_parameters()} == initial


def test_resuming_a_run_dynft_stopped_keeps_its_end(tmp_path):
    """dynft stops at evaluation 6 of 8 epochs; resuming its last checkpoint ends the same."""
    final, decisions = straight_run(
        "bert", tmp_path / "straight", save_strategy="epoch", num_train_epochs=8
    )
    assert decisions[-1]["stop"] and decisions[-1]["epoch"] == 6
    copy_checkpoints(tmp_path / "straight", tmp_path, 24)
    trainer, callback, _ = resumed_trainer(
        "bert", tmp_path, 6, save_strategy="no", num_train_epochs=8
    )
    trainer.train(resume_from_checkpoint=True)
    assert [d.to_dict() for d in callback.decisions] == decisions
    assert same_weights(weights(trainer.model), final)


def test_vit_resume_that_trainer_loads_partly_is_refused_then_works(tmp_path):
    final, decisions = straight_run("vit", tmp_path / "straight", save_strategy="epoch")
    copy_checkpoints(tmp_path / "straight", tmp_path, 16)  # blocks 0 and 1 trained by then
    trainer, _, _ = resumed_trainer("vit", tmp_path, 4, save_strategy="epoch")
    with pytest.raises(RuntimeError, match=r"Trainer's resume did not restore \d+ of .*43701"):
        trainer.train(resume_from_checkpoint=True)

    # the remedy the error names: build the model from the checkpoint, which converts the keys
    model = transformers.ViTForImageClassification.from_pretrained(tmp_path / "checkpoint-16")
    trainer, callback, _ = resumed_trainer("vit", tmp_path, 4, model=model, save_strategy="epoch")
    trainer.train(resume_from_checkpoint=True)
    assert [d.to_dict() for d in callback.decisions] == decisions
    assert same_weights(weights(trainer.model), final)

"""FineTuneConfig (the options every adapter takes) and carry_out (the order of the actions)."""

from __future__ import annotations

import math
import warnings

import pytest

from dynft_core import (
    Decision,
    FineTuneConfig,
    ResumeMismatchError,
    UnfreezeScheduler,
    carry_out,
    check_resume_point,
    resolve_mode,
)


@pytest.mark.parametrize(
    ("monitor", "direction"),
    [
        ("val_loss", "min"),
        ("loss", "min"),
        ("eval_loss", "min"),
        ("val_mean_squared_error", "min"),
        ("val_categorical_crossentropy", "min"),
        ("val_mae", "min"),
        ("val_accuracy", "max"),
        ("val_acc", "max"),
        ("accuracy", "max"),
        ("val_binary_accuracy", "max"),
        ("val_sparse_categorical_accuracy", "max"),
        ("val_auc", "max"),
        ("eval_f1", "max"),
        ("val/acc", "max"),
        ("val_precision", "max"),
        ("val_recall", "max"),
        ("val_balanced_accuracy", "max"),
    ],
)
def test_auto_mode_reads_the_direction_off_the_name(monitor: str, direction: str) -> None:
    assert resolve_mode("auto", monitor) == direction
    assert FineTuneConfig(monitor=monitor).direction == direction


@pytest.mark.parametrize("monitor", ["val_foo", "lr", "epoch_time"])
def test_auto_mode_refuses_a_name_it_cannot_read(monitor: str) -> None:
    with pytest.raises(ValueError, match=rf"cannot tell whether '{monitor}'.*mode='min'"):
        FineTuneConfig(monitor=monitor)
    assert FineTuneConfig(monitor=monitor, mode="max").direction == "max"


def test_explicit_mode_wins_over_the_name() -> None:
    assert FineTuneConfig(monitor="val_accuracy", mode="min").direction == "min"


@pytest.mark.parametrize(
    ("option", "bad", "message"),
    [
        ("patience", 0, "patience must be an integer >= 1"),
        ("step", 1.5, "step must be an integer >= 1"),
        ("decay", 1.0, "decay must be a number with 0 <= decay < 1"),
        ("max_epochs", 0, "max_epochs must be an integer >= 1"),
        ("min_delta", -1.0, "min_delta must be a finite number >= 0"),
        ("monitor", "", "monitor must be a non-empty string"),
        ("mode", "avg", "mode must be 'auto', 'min' or 'max'"),
        ("unfrozen_lr_ratio", 0.0, "unfrozen_lr_ratio must be a finite number > 0"),
        ("unfrozen_lr_ratio", math.inf, "unfrozen_lr_ratio must be a finite number > 0"),
        ("restore_best_weights", "yes", "restore_best_weights must be True or False"),
        ("train_batchnorm", 1, "train_batchnorm must be True or False"),
    ],
)
def test_bad_options_are_named_with_what_is_allowed(option: str, bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FineTuneConfig.from_options(**{option: bad})


def test_unknown_option_lists_the_known_ones() -> None:
    expected = r"unknown fine-tuning option\(s\) \['patiense'\].*'patience'"
    with pytest.raises(TypeError, match=expected):
        FineTuneConfig.from_options(patiense=3)


def test_options_override_a_given_config_and_round_trip() -> None:
    base = FineTuneConfig(patience=2, unfrozen_lr_ratio=0.1)
    merged = FineTuneConfig.from_options(base, step=1)
    assert (merged.patience, merged.step, merged.unfrozen_lr_ratio) == (2, 1, 0.1)
    assert FineTuneConfig.from_dict(merged.to_dict()) == merged
    with pytest.raises(TypeError, match="config must be a FineTuneConfig"):
        FineTuneConfig.from_options({"patience": 2})  # type: ignore[arg-type]


def test_the_scheduler_it_builds_has_its_options() -> None:
    config = FineTuneConfig(patience=2, step=1, decay=0.5, monitor="val_auc",
                            restore_best_weights=False)  # fmt: skip
    s = config.scheduler(7, max_epochs=9)
    assert s.config() == {
        "num_groups": 7,
        "patience": 2,
        "step": 1,
        "decay": 0.5,
        "max_epochs": 9,
        "min_delta": 0.0,
        "mode": "max",
        "restore_best_weights": False,
    }


def test_budget_takes_the_frameworks_and_warns_when_it_cannot_be_reached() -> None:
    assert FineTuneConfig().budget(6) == 6
    assert FineTuneConfig().budget(None) is None
    assert FineTuneConfig(max_epochs=4).budget(6) == 4
    with pytest.warns(UserWarning, match=r"max_epochs=20 but the framework stops after 6 epochs"):
        assert FineTuneConfig(max_epochs=20).budget(6) == 20


class Recorder:
    """Actions that only record the calls, to check the order carry_out uses."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def capture_best(self) -> None:
        self.calls.append(("capture_best",))

    def unfreeze(self, groups: tuple[int, ...], lr_ratio: float) -> None:
        self.calls.append(("unfreeze", groups, lr_ratio))

    def scale_learning_rate(self, factor: float) -> None:
        self.calls.append(("scale_learning_rate", factor))

    def restore_best(self, diverged: bool) -> None:
        self.calls.append(("restore_best", diverged))

    def stop_training(self) -> None:
        self.calls.append(("stop_training",))


def _run(values: list[float], **options: object) -> list[list[tuple[object, ...]]]:
    s = UnfreezeScheduler(4, patience=1, step=2, decay=0.5, max_epochs=len(values), **options)
    trace = []
    for value in values:
        actions = Recorder()
        carry_out(s.step(value), actions, lr_ratio=0.1)
        trace.append(actions.calls)
    return trace


def test_carry_out_calls_the_actions_in_the_one_order() -> None:
    trace = _run([1.0, 2.0, 0.5, 0.6, 0.7])
    assert trace == [
        [("capture_best",)],
        [("unfreeze", (2, 3), 0.1), ("scale_learning_rate", 0.5), ("restore_best", False)],
        [("capture_best",)],
        [("unfreeze", (0, 1), 0.1), ("scale_learning_rate", 0.5), ("restore_best", False)],
        [("restore_best", False), ("stop_training",)],
    ]


def test_a_diverged_epoch_is_rolled_back_and_says_so() -> None:
    trace = _run([1.0, math.nan, 0.5])
    assert trace[1] == [
        ("unfreeze", (2, 3), 0.1),
        ("scale_learning_rate", 0.5),
        ("restore_best", True),
    ]


def test_a_diverged_epoch_without_a_best_warns() -> None:
    s = UnfreezeScheduler(2, patience=3)
    actions = Recorder()
    with pytest.warns(RuntimeWarning, match="no earlier best state to roll back to"):
        carry_out(s.step(math.inf), actions)
    assert actions.calls == []


def test_finish_is_carried_out_as_restore_then_stop() -> None:
    s = UnfreezeScheduler(2, patience=3, max_epochs=10)
    s.step(1.0)
    s.step(2.0)
    actions = Recorder()
    carry_out(s.finish("fit ended"), actions)
    assert actions.calls == [("restore_best", False), ("stop_training",)]
    actions = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        carry_out(s.finish("on_train_end"), actions)
    assert actions.calls == [("stop_training",)]


def test_decision_from_dict_checks_every_field() -> None:
    s = UnfreezeScheduler(2, patience=1)
    data = s.step(1.0).to_dict()
    assert Decision.from_dict(data).to_dict() == data
    with pytest.raises(ValueError, match="'stop' must be true or false"):
        Decision.from_dict({**data, "stop": "false"})
    with pytest.raises(ValueError, match=r"missing \['reason'\]"):
        Decision.from_dict({k: v for k, v in data.items() if k != "reason"})


def test_resume_point_mismatch_names_both_epochs_and_the_recovery() -> None:
    check_resume_point(4, 4, "BackupAndRestore", "delete the folder")
    with pytest.raises(ResumeMismatchError) as caught:
        check_resume_point(5, 4, "BackupAndRestore", "Delete the backup folder to start over.")
    message = str(caught.value)
    assert "at epoch 5" in message and "after epoch 4" in message
    assert "BackupAndRestore" in message and "Delete the backup folder" in message

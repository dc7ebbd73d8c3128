"""Saving and resuming the tuner mid-run: identical later decisions and weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from dynft_torch import DynamicFineTuner
from tiny_models import TinyNet, make_data, train_epoch

# patience 2, step 1 over 4 groups: unfreezes at epochs 4 and 7, improvements after both
VALUES = (1.0, 0.9, 0.95, 0.97, 0.85, 0.9, 0.92, 0.8)
SAVE_AFTER = 4


def build(seed: int, head_only: bool, restore_optimizer: bool):
    torch.manual_seed(seed)
    model = TinyNet()
    params = model.head.parameters() if head_only else model.parameters()
    optimizer = torch.optim.Adam(params, lr=0.01)
    tuner = DynamicFineTuner(
        model, optimizer, model.backbone, patience=2, step=1, restore_optimizer=restore_optimizer
    )
    return model, optimizer, tuner


def run(model, optimizer, tuner, epochs) -> list[dict]:
    decisions = []
    for epoch in epochs:
        torch.manual_seed(100 + epoch)  # the dropout-free model still gets fresh data per epoch
        train_epoch(model, optimizer, make_data(seed=epoch))
        decisions.append(tuner.step(VALUES[epoch]).to_dict())
    return decisions


@pytest.mark.parametrize(
    ("head_only", "restore_optimizer"), [(True, True), (False, False)], ids=["head-only", "all"]
)
def test_resume_mid_run_gives_identical_decisions_and_weights(
    tmp_path, head_only, restore_optimizer
):
    model, optimizer, tuner = build(0, head_only, restore_optimizer)
    straight = run(model, optimizer, tuner, range(len(VALUES)))
    assert [d["newly_unfrozen"] for d in straight] == [[], [], [], [3], [], [], [2], []]

    first, opt_first, tuner_first = build(0, head_only, restore_optimizer)
    resumed = run(first, opt_first, tuner_first, range(SAVE_AFTER))
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model": first.state_dict(),
            "optimizer": opt_first.state_dict(),
            "tuner": tuner_first.state_dict(),
        },
        path,
    )
    checkpoint = torch.load(path, weights_only=True)
    second, opt_second, tuner_second = build(1, head_only, restore_optimizer)
    second.load_state_dict(checkpoint["model"])
    tuner_second.load_state_dict(checkpoint["tuner"])
    opt_second.load_state_dict(checkpoint["optimizer"])
    resumed += run(second, opt_second, tuner_second, range(SAVE_AFTER, len(VALUES)))

    assert resumed == straight
    for name, tensor in model.state_dict().items():
        assert torch.equal(second.state_dict()[name], tensor), name
    assert [g["lr"] for g in opt_second.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert len(opt_second.param_groups) == (3 if head_only else 1)


def test_state_is_keyed_by_names_and_json_plain_apart_from_tensors():
    model, optimizer, tuner = build(0, head_only=True, restore_optimizer=True)
    run(model, optimizer, tuner, range(SAVE_AFTER))
    state = tuner.state_dict()
    json.dumps(state["scheduler"])
    assert state["placements"] == [
        {"parameters": ["backbone.3.0.weight"], "template": 0, "settings": {}}
    ]
    # group 3 joined the snapshot when it was unfrozen (a later rollback must restore it)
    assert set(state["snapshot"]) == {"head.weight", "head.bias", "backbone.3.0.weight"}
    assert set(state["optimizer_snapshot"]["state"]) == {"head.weight", "head.bias"}


def test_loading_into_a_differently_grouped_tuner_fails_clearly():
    model, _, tuner = build(0, head_only=False, restore_optimizer=False)
    other = DynamicFineTuner(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        model.backbone,
        groups="modules",
        patience=2,
        step=1,
    )
    with pytest.raises(ValueError, match="differ from this tuner's 8 groups"):
        other.load_state_dict(tuner.state_dict())
    with pytest.raises(ValueError, match="not a dynft_torch.DynamicFineTuner state"):
        tuner.load_state_dict({"scheduler": {}})


def corrupt(path, value):
    """A mutator setting ``state[path]`` to ``value`` (``KeyError``: deleting it).

    ``path`` is dotted (list indices allowed), or a tuple of keys for names holding dots.
    """

    def mutate(state):
        *parents, last = path.split(".") if isinstance(path, str) else path
        target = state
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return state

    return mutate


BAD_STATES = {
    "format": (corrupt("format", "other"), "not a dynft_torch.DynamicFineTuner state"),
    "version": (corrupt("version", 1), "of version 2: got format .*, version 1"),
    "missing-key": (corrupt("placements", KeyError), "'placements' is missing"),
    "unknown-key": (corrupt("extra", 1), "'extra' is unknown"),
    "ratio": (corrupt("options.unfrozen_lr_ratio", 0.5), "saved with unfrozen_lr_ratio=0.5"),
    "wait": (corrupt("scheduler.monitor.wait", -3), "'scheduler' is invalid: .*monitor.wait"),
    "stopped": (corrupt("scheduler.stopped", "false"), "'scheduler' is invalid: .*'stopped'"),
    "groups": (corrupt("group_parameter_names.0", ["x"]), "groups that differ"),
    "placed-name": (
        corrupt("placements.0.parameters", ["backbone.0.0.weight"]),
        "'placements\\[0\\].parameters' must list parameters of the unfrozen groups",
    ),
    "template": (corrupt("placements.0.template", 7), "'placements\\[0\\].template'"),
    "unplaced": (corrupt("placements", []), "'placements' does not place"),
    "snapshot-shape": (
        corrupt(("snapshot", "head.weight"), torch.zeros(2)),
        "'snapshot.head.weight' has shape",
    ),
    "snapshot-missing": (
        corrupt(("snapshot", "backbone.3.0.weight"), KeyError),
        "'snapshot' does not hold what the run trained",
    ),
    "optimizer-snapshot": (
        corrupt("optimizer_snapshot.state.nowhere", {}),
        "'optimizer_snapshot' is invalid: .*unknown parameter 'nowhere'",
    ),
}


@pytest.mark.parametrize(("mutate", "match"), BAD_STATES.values(), ids=BAD_STATES.keys())
def test_a_failed_load_names_the_key_and_changes_nothing(mutate, match):
    model, optimizer, tuner = build(0, head_only=True, restore_optimizer=True)
    run(model, optimizer, tuner, range(SAVE_AFTER))
    good = tuner.state_dict()
    bad = mutate(copy.deepcopy(good))
    fresh_model, fresh_optimizer, fresh = build(1, head_only=True, restore_optimizer=True)
    before = (
        fresh.scheduler.state_dict(),
        [n for n, p in fresh_model.named_parameters() if p.requires_grad],
        len(fresh_optimizer.param_groups),
    )
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(bad)
    after = (
        fresh.scheduler.state_dict(),
        [n for n, p in fresh_model.named_parameters() if p.requires_grad],
        len(fresh_optimizer.param_groups),
    )
    assert after == before and fresh.snapshot.empty and fresh._placer.placements == []
    fresh.load_state_dict(good)  # the same tuner still takes a good state
    assert fresh.scheduler.epoch == SAVE_AFTER and len(fresh_optimizer.param_groups) == 2


def test_only_a_fresh_tuner_loads_a_state():
    model, optimizer, tuner = build(0, head_only=False, restore_optimizer=False)
    run(model, optimizer, tuner, range(2))
    with pytest.raises(ValueError, match="needs a freshly built tuner; this one has already"):
        tuner.load_state_dict(tuner.state_dict())

"""Each strategy trains exactly its layers, checked on the weights of a tiny backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recording import record_instances
from study_helpers import TINY_BACKBONE

from benchmarks.study.config import STRATEGIES, StudyConfig
from benchmarks.study.data.batches import make_training_data
from benchmarks.study.data.phantom import CLASS_NAMES, make_phantom
from benchmarks.study.data.splits import split_dataset
from benchmarks.study.models.torch_backbones import build_classifier
from benchmarks.study.runners import torch_runner
from benchmarks.study.runners.records import RunContext

CONV_1, CONV_2 = "backbone.body.0.", "backbone.body.3."
BATCH_NORMS = ("backbone.body.1.", "backbone.body.4.")
LR = 0.01
PLATEAU_LR = 0.1


def _train(strategy: str, tmp_path: Path, ratio: float = 1.0, lr: float = LR):
    backbone = TINY_BACKBONE
    dataset = make_phantom(84, 32, seed=0)
    split = split_dataset(dataset, 0)
    data = make_training_data(dataset.images, dataset.labels, split, 32, 7, 16, seed=0)
    cfg = StudyConfig(
        weights="none", epochs=6, patience=1, lr=lr, image_size=32, unfrozen_lr_ratio=ratio
    )
    ctx = RunContext(backbone, strategy, 0, "phantom", True, list(CLASS_NAMES), 32, tmp_path)
    torch.manual_seed(0)  # the runner seeds the same way before building
    initial, _ = build_classifier(backbone, "none", 7, 32)
    model, outcome, _, _ = torch_runner.train(cfg, ctx, data)
    before = initial.state_dict()
    changed = {
        name: not torch.equal(before[name], value) for name, value in model.state_dict().items()
    }
    return outcome, changed


def _changed(changed: dict[str, bool], prefix: str) -> bool:
    flags = [flag for name, flag in changed.items() if name.startswith(prefix)]
    assert flags, prefix
    return any(flags)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_changes_exactly_its_layers(strategy, tmp_path):
    outcome, changed = _train(strategy, tmp_path)
    assert _changed(changed, "head.")
    for prefix in BATCH_NORMS:  # weights, biases and running statistics all frozen
        assert not _changed(changed, prefix), prefix
    unfrozen_before_best = any(e["epoch"] < outcome.best_epoch for e in outcome.unfreeze_events)
    expected = {
        "linear_probe": (False, False),
        "traditional": (False, True),  # top 1 of the 2 layers
        "full": (True, True),
        "two_stage": (unfrozen_before_best, unfrozen_before_best),
        "dynamic": (unfrozen_before_best, unfrozen_before_best),  # step 3 > 2 layers: both
        "dynamic_tuned": (unfrozen_before_best, unfrozen_before_best),
    }[strategy]
    assert (_changed(changed, CONV_1), _changed(changed, CONV_2)) == expected


@pytest.mark.parametrize(("strategy", "factor"), [("two_stage", 0.1), ("dynamic", 0.9)])
def test_staged_strategies_unfreeze_at_their_rate(strategy, factor, tmp_path):
    # at this rate the zero-initialised head overshoots early, so the first plateau comes soon
    outcome, _ = _train(strategy, tmp_path, lr=PLATEAU_LR)
    assert outcome.num_groups == (1 if strategy == "two_stage" else 2)
    events = outcome.unfreeze_events
    assert events, "patience 1 over 6 epochs unfreezes at the first miss"
    assert events[0]["lr"] == pytest.approx(PLATEAU_LR * factor)
    after = [entry for entry in outcome.timeline if entry["epoch"] > events[0]["epoch"]]
    assert after and all(entry["lr"] == pytest.approx(PLATEAU_LR * factor) for entry in after)
    assert all(entry["num_unfrozen"] == events[0]["num_unfrozen"] for entry in after)
    assert outcome.timeline[-1]["epoch"] <= 6


@pytest.mark.parametrize(("strategy", "ratio"), [("dynamic_tuned", 0.1), ("dynamic", 1.0)])
def test_the_unfrozen_layers_train_at_the_ratio_of_the_heads_rate(
    strategy, ratio, tmp_path, monkeypatch
):
    import dynft_torch

    tuners = record_instances(monkeypatch, dynft_torch, "DynamicFineTuner")
    # dynamic ignores the study's ratio: Algorithm 1 runs everything at one rate
    outcome, _ = _train(strategy, tmp_path, ratio=0.1, lr=PLATEAU_LR)
    (tuner,) = tuners
    assert tuner.config.unfrozen_lr_ratio == ratio
    assert outcome.unfreeze_events, "patience 1 over 6 epochs unfreezes at the first miss"
    rates = {}
    for group in tuner.optimizer.param_groups:
        for parameter in group["params"]:
            rates[id(parameter)] = group["lr"]
    model = tuner.model
    head_rate = rates[id(model.head.weight)]
    assert head_rate == pytest.approx(outcome.unfreeze_events[-1]["lr"])
    unfrozen = [p for p in model.backbone.parameters() if p.requires_grad]
    assert len(unfrozen) == 4  # both convolutions' weights and biases; BatchNorm stays frozen
    assert all(rates[id(p)] == pytest.approx(ratio * head_rate) for p in unfrozen)

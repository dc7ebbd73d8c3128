"""The study's command line: the unfrozen-group rate ratio and the classes left out."""

from __future__ import annotations

import pytest

from benchmarks.study.cli import UsageError, build_parser, resolve_config
from benchmarks.study.config import DEFAULT_STRATEGIES, STRATEGIES
from benchmarks.study.presets import EVIDENCE_COVID, EVIDENCE_PNEUMONIA, QUICK


def _config(*flags: str):
    return resolve_config(build_parser().parse_args(list(flags)))


def test_the_default_strategies_leave_out_dynamic_tuned():
    assert _config().strategies == DEFAULT_STRATEGIES == STRATEGIES[:-1]
    assert "dynamic_tuned" not in QUICK.strategies


def test_unfrozen_lr_ratio_is_read_and_checked():
    assert _config().unfrozen_lr_ratio == 1.0
    cfg = _config("--unfrozen-lr-ratio", "0.1", "--strategies", "dynamic,dynamic_tuned")
    assert cfg.unfrozen_lr_ratio == 0.1 and cfg.strategies == ("dynamic", "dynamic_tuned")
    for bad in ("0.0", "-1.0", "nan", "inf"):
        with pytest.raises(UsageError, match=f"--unfrozen-lr-ratio {bad}: must be a finite"):
            _config("--unfrozen-lr-ratio", bad)


def test_dynamic_tuned_needs_a_ratio_other_than_one_or_a_ratio_sweep():
    with pytest.raises(UsageError, match="dynamic_tuned at --unfrozen-lr-ratio 1.0 is dynamic"):
        _config("--strategies", "dynamic_tuned")
    swept = _config("--strategies", "dynamic_tuned", "--sweep", "unfrozen_lr_ratio=0.1,1")
    assert swept.sweep == {"unfrozen_lr_ratio": (0.1, 1.0)}


def test_drop_classes_is_a_list_of_names():
    assert _config().drop_classes == ()
    assert _config("--drop-classes", "ARDS, No Finding").drop_classes == ("ARDS", "No Finding")
    with pytest.raises(UsageError, match="--drop-classes got ','"):
        _config("--drop-classes", ",")


def test_the_evidence_parts_run_dynamic_tuned_with_the_ratio_swept():
    for part in (EVIDENCE_COVID, EVIDENCE_PNEUMONIA):
        assert part.strategies == STRATEGIES
        assert part.sweep["unfrozen_lr_ratio"] == (0.1, 1.0)
    assert EVIDENCE_COVID.drop_classes == ("ARDS",) and EVIDENCE_PNEUMONIA.drop_classes == ()


def test_the_quick_preset_trains_full_at_a_tenth_of_the_rate():
    cfg = _config()
    assert cfg.lr == 1e-3 and cfg.strategy_lr == {"full": 1e-4}
    assert cfg.for_strategy("full").lr == 1e-4 and cfg.for_strategy("dynamic").lr == 1e-3
    assert cfg.for_strategy("dynamic") is cfg  # nothing else changes


def test_strategy_lr_is_read_and_an_explicit_lr_is_every_strategys():
    assert _config("--lr", "3e-4").strategy_lr == {}
    both = _config("--lr", "3e-4", "--strategy-lr", "full=1e-5, traditional=2e-4")
    assert both.lr == 3e-4 and both.strategy_lr == {"full": 1e-5, "traditional": 2e-4}
    assert _config("--strategy-lr", "none").strategy_lr == {}
    assert _config("--preset", "paper").strategy_lr == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fulll=1e-4", "unknown strategy 'fulll' in 'fulll=1e-4'; known: linear_probe,"),
        ("full=0", "'full=0' must look like strategy=RATE with a finite RATE > 0"),
        ("full=fast", "'full=fast' must look like"),
        ("full", "'full' must look like"),
        ("full=inf", "'full=inf' must look like"),
        ("full=1e-4,full=1e-5", "full is given twice; give each strategy once"),
    ],
)
def test_a_bad_strategy_lr_names_the_value(text, message):
    with pytest.raises(UsageError, match=message):
        _config("--strategy-lr", text)

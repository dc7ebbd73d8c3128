"""The feature-cache study benchmark's arguments: runs and image counts, bad ones named."""

from __future__ import annotations

import pytest

from benchmarks.perf import feature_cache_study as bench


def test_a_run_and_an_image_count_are_read():
    assert bench.parse_run("224:traditional:on") == (224, "traditional", True)
    assert bench.parse_images("96=600") == (96, 600)


@pytest.mark.parametrize("text", ["128=600", "96=41", "96=", "96", "x=600"])
def test_a_bad_image_count_names_the_value(text):
    with pytest.raises(bench.argparse.ArgumentTypeError, match=f"{text!r}: give SIZE=IMAGES"):
        bench.parse_images(text)


def test_the_command_line_refuses_a_bad_run_before_importing_a_framework(capsys):
    with pytest.raises(SystemExit):
        bench.main(["keras", "--runs", "96:full:off"])
    assert "'96:full:off': give SIZE:STRATEGY:AUGMENTATION" in capsys.readouterr().err

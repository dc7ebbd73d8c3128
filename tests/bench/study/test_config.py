"""StudyConfig: the per-backbone traditional depth and its bound."""

from __future__ import annotations

import pytest

from benchmarks.study.config import StudyConfig, StudyConfigError


def test_top_n_takes_the_override_and_refuses_more_layers_than_the_backbone_has() -> None:
    cfg = StudyConfig(top_n={"vgg16": 4})
    assert cfg.top_n_for("vgg16", 10, 20, "weight layers of") == 4
    assert cfg.top_n_for("resnet50", 5, 20, "weight layers of") == 5
    with pytest.raises(
        StudyConfigError,
        match=r"^--top-n vgg16=4 exceeds the 3 layers of the Keras vgg16; use at most 3$",
    ):
        cfg.top_n_for("vgg16", 10, 3, "layers of the Keras")

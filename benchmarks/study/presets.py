"""Study presets: named starting configurations that command-line flags override.

Two presets exist:

* ``quick`` (the default): a scaled-down study that runs fully offline on a
  2-core CPU in a few minutes — EfficientNet-Lite0 with its real ImageNet
  weights (PyTorch), the built-in phantom data, all five strategies, one seed,
  small images, a short epoch budget and a small patience so that unfreezes
  really happen within that budget.
* ``paper``: the configuration of the paper's Section IV — all seven
  backbones at their native input size, p=5, k=3, decay=0.1, n=100 epochs.
  The paper states neither optimizer, learning rate nor batch size; Adam with
  a learning rate of 1e-4 and batches of 32 are *our* choice (see
  ``docs/study.md``). Meant for a GPU.

Flags given explicitly on the command line override the preset's values.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from benchmarks.study.config import StudyConfig
from benchmarks.study.paper_defaults import PAPER_BACKBONES

QUICK = StudyConfig()

PAPER = StudyConfig(
    backbones=PAPER_BACKBONES,
    image_size=None,
    epochs=100,
    seeds=(0, 1, 2),
    batch_size=32,
    lr=1e-4,
    patience=5,
    step=3,
    decay=0.1,
    phantom_images=2000,
    phantom_size=256,
    threads=None,
)

PRESETS = {"quick": QUICK, "paper": PAPER}

# The quick preset's backbone exists on PyTorch only; on Keras it runs
# MobileNetV2, the paper's best model and the one real Keras weight file we know of.
_KERAS_QUICK_BACKBONES = ("mobilenet_v2",)


def preset_config(name: str, framework: str | None = None) -> StudyConfig:
    """The preset ``name`` for ``framework`` (the preset's own framework when ``None``).

    Args:
        name: ``"quick"`` or ``"paper"``.
        framework: ``"torch"``, ``"keras"`` or ``None``. Defaults to ``None``.

    Raises:
        ValueError: Unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]
    if framework is None or framework == config.framework:
        return config
    changes: dict[str, Any] = {"framework": framework}
    if name == "quick" and framework == "keras":
        changes["backbones"] = _KERAS_QUICK_BACKBONES
    return replace(config, **changes)

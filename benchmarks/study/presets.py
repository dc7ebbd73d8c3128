"""Study presets: named starting configurations that command-line flags override.

The presets:

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

* ``evidence-covid`` and ``evidence-pneumonia``: the two parts of the ``evidence`` suite
  (``benchmarks.study.suite``): every strategy (``dynamic_tuned`` included) on one real shared
  data set, five seeds, the learning rate swept per strategy and the unfrozen-group rate ratio
  per staged strategy that takes it, on the validation split. The COVID part leaves out
  ``ARDS`` (4 images of 4 patients: nothing to learn from, one test image deciding a quarter
  of the balanced accuracy; see ``docs/benchmarks.md``). They read the shared folder
  (``$DYNFT_SHARED``, else ``shared`` beside the repository).

Flags given explicitly on the command line override the preset's values.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.study.config import STRATEGIES, StudyConfig, StudyConfigError
from benchmarks.study.paper_defaults import PAPER_BACKBONES

# The shared reference folder the evidence presets read (never copied into the repository).
SHARED_FILES = {
    "covid": "data/covid_cxr_128.npz",
    "pneumonia": "data/pneumoniamnist.npz",
    "mobilenet_v2": "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}
EVIDENCE_SEEDS = (0, 1, 2, 3, 4)
# 5 seeds x 6 strategies plus 2 sweep trials per strategy (4 for two_stage and dynamic_tuned),
# per data set, at 12 epochs: 23.5 min (COVID-19) and 30.4 min (PneumoniaMNIST) side by side on
# a 2-core CPU (docs/benchmarks.md).
EVIDENCE_SWEEP = {"lr": (1e-4, 1e-3), "unfrozen_lr_ratio": (0.1, 1.0)}
EVIDENCE_EPOCHS = 12
EVIDENCE_PATIENCE = 2

# Adam 1e-3 lets the zero head converge and the staged strategies unfreeze within 12 epochs;
# `full` trains every layer from the first step, and at that rate it lost the pretrained
# features (below the majority class, three classes never predicted; docs/benchmarks.md).
QUICK = StudyConfig(strategy_lr={"full": 1e-4})

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


def _evidence_part(
    framework: str,
    data: str,
    backbone: str,
    weights: str,
    size: int,
    drop_classes: tuple[str, ...] = (),
) -> StudyConfig:
    """One part of the evidence suite: every strategy, five seeds, rate and ratio swept."""
    return StudyConfig(
        framework=framework,
        data="{shared}/" + SHARED_FILES[data],
        backbones=(backbone,),
        weights=weights,
        image_size=size,
        strategies=STRATEGIES,
        drop_classes=drop_classes,
        epochs=EVIDENCE_EPOCHS,
        seeds=EVIDENCE_SEEDS,
        patience=EVIDENCE_PATIENCE,
        sweep=EVIDENCE_SWEEP,
    )


EVIDENCE_COVID = _evidence_part(
    "keras", "covid", "mobilenet_v2", "{shared}/" + SHARED_FILES["mobilenet_v2"], 96, ("ARDS",)
)
EVIDENCE_PNEUMONIA = _evidence_part("torch", "pneumonia", "efficientnet_lite0", "imagenet", 28)

PRESETS = {
    "quick": QUICK,
    "paper": PAPER,
    "evidence-covid": EVIDENCE_COVID,
    "evidence-pneumonia": EVIDENCE_PNEUMONIA,
}


def shared_folder() -> Path:
    """``$DYNFT_SHARED``, else the ``shared`` folder beside the repository."""
    default = Path(__file__).resolve().parents[3] / "shared"
    return Path(os.environ.get("DYNFT_SHARED", default))


def _with_shared_paths(config: StudyConfig, name: str) -> StudyConfig:
    if "{shared}" not in config.data + config.weights:
        return config
    folder = shared_folder()
    resolved = replace(
        config,
        data=config.data.format(shared=folder),
        weights=config.weights.format(shared=folder),
    )
    for path in (resolved.data, resolved.weights):
        if path not in ("imagenet", "none") and not Path(path).is_file():
            raise StudyConfigError(
                f"--preset {name} needs {path}, which does not exist; set DYNFT_SHARED to the "
                "folder holding the shared data/ and weights/"
            )
    return resolved


# The quick preset's backbone exists on PyTorch only; on Keras it runs
# MobileNetV2, the paper's best model and the one real Keras weight file we know of.
_KERAS_QUICK_BACKBONES = ("mobilenet_v2",)


def preset_config(name: str, framework: str | None = None) -> StudyConfig:
    """The preset ``name`` for ``framework`` (the preset's own framework when ``None``).

    Args:
        name: A key of :data:`PRESETS`.
        framework: ``"torch"``, ``"keras"`` or ``None``. Defaults to ``None``.

    Raises:
        ValueError: Unknown preset name.
        StudyConfigError: A shared file the preset reads is missing.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = _with_shared_paths(PRESETS[name], name)
    if framework is None or framework == config.framework:
        return config
    if config.weights not in ("imagenet", "none"):
        raise StudyConfigError(
            f"--preset {name} runs on {config.framework} with its weights file; drop "
            f"--framework {framework}"
        )
    changes: dict[str, Any] = {"framework": framework}
    if name == "quick" and framework == "keras":
        changes["backbones"] = _KERAS_QUICK_BACKBONES
    return replace(config, **changes)

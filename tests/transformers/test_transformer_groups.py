"""groups='auto' on Hugging Face and timm models: the group layout per family, checked against
the order in which a forward pass runs the modules; the head; clear errors; the group table."""

from __future__ import annotations

import pytest
import torch
import transformers
from dynft_torch import DynamicFineTuner, resolve_groups
from dynft_torch.transformer_groups import describe_groups
from tiny_transformers import build, make_batch, timm_vit, vit_blocks
from torch import nn

VIT_BLOCKS = vit_blocks()
# family -> (group labels, shallowest first; head parameter prefixes)
LAYOUTS = {
    "bert": (
        ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1"],
        ("bert.pooler.", "classifier."),
    ),
    "roberta": (
        ["roberta.embeddings", "roberta.encoder.layer.0", "roberta.encoder.layer.1"],
        ("classifier.",),
    ),
    "distilbert": (
        [
            "distilbert.embeddings",
            "distilbert.transformer.layer.0",
            "distilbert.transformer.layer.1",
        ],
        ("pre_classifier.", "classifier."),
    ),
    "vit": (
        ["vit.embeddings", f"vit.{VIT_BLOCKS}.0", f"vit.{VIT_BLOCKS}.1+vit.layernorm"],
        ("classifier.",),
    ),
    "deit": (
        ["deit.embeddings", f"deit.{VIT_BLOCKS}.0", f"deit.{VIT_BLOCKS}.1+deit.layernorm"],
        ("cls_classifier.", "distillation_classifier."),
    ),
    "swin": (
        [
            "swin.embeddings",
            "swin.encoder.layers.0.blocks.0",
            "swin.encoder.layers.0.blocks.1+swin.encoder.layers.0.downsample",
            "swin.encoder.layers.1.blocks.0",
            "swin.encoder.layers.1.blocks.1+swin.layernorm",
        ],
        ("classifier.",),
    ),
    "convnext": (
        [
            "convnext.embeddings",
            "convnext.encoder.stages.0",
            "convnext.encoder.stages.1.downsampling_layer+convnext.encoder.stages.1.layers.0",
            "convnext.encoder.stages.1.layers.1+convnext.layernorm",
        ],
        ("classifier.",),
    ),
    "resnet": (
        [
            "resnet.embedder",
            "resnet.encoder.stages.0",
            "resnet.encoder.stages.1.layers.0",
            "resnet.encoder.stages.1.layers.1",
        ],
        ("classifier.",),
    ),
    "timm_vit": (["patch_embed", "blocks.0", "blocks.1", "blocks.2+norm"], ("head.",)),
    "timm_convnext": (
        [
            "stem",
            "stages.0",
            "stages.1.downsample+stages.1.blocks.0",
            "stages.1.blocks.1",
            "stages.2",
            "stages.3+head.norm",
        ],
        ("head.fc.",),
    ),
}


def head_names(model, groups):
    grouped = {name for group in groups for name in group.parameter_names}
    return [name for name, _ in model.named_parameters() if name not in grouped]


def assert_partition(model, groups, head_prefixes):
    """Every parameter is in exactly one group or in the head, and the head is what we expect."""
    grouped = [name for group in groups for name in group.parameter_names]
    assert len(grouped) == len(set(grouped))
    head = head_names(model, groups)
    assert head and all(name.startswith(head_prefixes) for name in head), head
    assert all(any(n.startswith(p) for n in head) for p in head_prefixes)


def execution_order(model, inputs):
    """Modules owning parameters directly, in the order a forward pass first enters them."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            hook = lambda m, a, name=name: order.append(name) if name not in order else None  # noqa: E731
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model.eval()(inputs)
    for handle in handles:
        handle.remove()
    return order


@pytest.mark.parametrize("family", list(LAYOUTS))
def test_layout_per_family(family):
    model = build(family)
    labels, head_prefixes = LAYOUTS[family]
    groups = resolve_groups(model)
    assert [group.name for group in groups] == labels
    assert_partition(model, groups, head_prefixes)
    # Shallowest first means: a forward pass runs the groups in index order.
    group_of = {n: g.index for g in groups for n in g.parameter_names}
    parameters_of = {
        name: [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        for name, module in model.named_modules()
    }
    ran = [
        group_of.get(parameters_of[name][0])
        for name in execution_order(model, make_batch(family)[0])
    ]
    ran = [index for index in ran if index is not None]
    assert ran == sorted(ran) and set(ran) == set(range(len(groups)))


@pytest.mark.parametrize(
    ("family", "first_group"),
    [
        ("vit", {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"}),
        ("deit", {"deit.embeddings.cls_token", "deit.embeddings.distillation_token"}),
        (
            "bert",
            {"bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight"},
        ),
        ("timm_vit", {"cls_token", "pos_embed", "patch_embed.proj.weight"}),
    ],
)
def test_tokens_and_embedding_norms_are_in_the_shallowest_group(family, first_group):
    model = build(family)
    assert first_group <= set(resolve_groups(model)[0].parameter_names)


def test_base_model_as_backbone_with_pooler_and_mask_token():
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2
    )
    model = transformers.ViTModel(config, add_pooling_layer=True, use_mask_token=True)
    groups = resolve_groups(model)
    assert [g.name for g in groups] == [
        "embeddings",
        f"{VIT_BLOCKS}.0",
        f"{VIT_BLOCKS}.1+layernorm",
    ]
    assert "embeddings.mask_token" in groups[0].parameter_names
    assert head_names(model, groups) == ["pooler.dense.weight", "pooler.dense.bias"]
    bert = build("bert")
    assert [g.parameter_names for g in resolve_groups(bert, "bert")] == [
        g.parameter_names for g in resolve_groups(bert)
    ]


def test_timm_final_norm_after_pooling_joins_the_deepest_block():
    model = timm_vit(depth=2, global_pool="avg", fc_norm=True)
    groups = resolve_groups(model)
    assert [g.name for g in groups] == ["patch_embed", "blocks.0", "blocks.1+fc_norm"]
    assert head_names(model, groups) == ["head.weight", "head.bias"]


def test_timm_distilled_model_keeps_both_heads_trainable():
    model = timm_vit("deit_tiny_distilled_patch16_224", depth=2)
    groups = resolve_groups(model)
    assert [g.name for g in groups] == ["patch_embed", "blocks.0", "blocks.1+norm"]
    assert head_names(model, groups) == [
        "head.weight",
        "head.bias",
        "head_dist.weight",
        "head_dist.bias",
    ]


def test_timm_model_inside_a_transformers_wrapper():
    config = transformers.TimmWrapperConfig(
        architecture="vit_tiny_patch16_224",
        num_labels=3,
        model_args={"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2},
    )
    model = transformers.TimmWrapperForImageClassification(config)
    groups = resolve_groups(model)
    assert [g.name for g in groups] == [
        "timm_model.patch_embed",
        "timm_model.blocks.0",
        "timm_model.blocks.1+timm_model.norm",
    ]
    assert head_names(model, groups) == ["timm_model.head.weight", "timm_model.head.bias"]


class Wrapper(nn.Module):
    """A user model holding a Hugging Face model and a head of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = build("vit").vit
        self.extra_head = nn.Linear(16, 3)


def test_a_module_containing_a_hugging_face_model_asks_for_the_backbone():
    model = Wrapper()
    with pytest.raises(ValueError, match=r"ViTModel at 'encoder': pass backbone='encoder'"):
        resolve_groups(model)
    groups = resolve_groups(model, "encoder")
    assert [g.name for g in groups] == [
        "encoder.embeddings",
        f"encoder.{VIT_BLOCKS}.0",
        f"encoder.{VIT_BLOCKS}.1+encoder.layernorm",
    ]
    assert head_names(model, groups) == ["extra_head.weight", "extra_head.bias"]


class NoBlocksModel(transformers.PreTrainedModel):
    config_class = transformers.PretrainedConfig

    def __init__(self, config: transformers.PretrainedConfig) -> None:
        super().__init__(config)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.classifier = nn.Linear(4, 2)


def test_unknown_architectures_ask_for_explicit_groups():
    with pytest.raises(
        ValueError, match=r"NoBlocksModel .* no ModuleList of blocks\. Pass groups="
    ):
        resolve_groups(NoBlocksModel(transformers.PretrainedConfig()))
    t5 = transformers.T5Model(
        transformers.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
    )
    with pytest.raises(
        ValueError, match=r"model_type 't5'.*several block lists .*'decoder.block', 'encoder.block'"
    ):
        resolve_groups(t5)
    groups = resolve_groups(t5, None, [t5.shared, *t5.encoder.block, t5.encoder.final_layer_norm])
    assert len(groups) == 4


def test_group_table_counts_and_states():
    model = build("resnet")
    tuner = DynamicFineTuner(model, torch.optim.SGD(model.parameters(), lr=0.1), patience=1, step=1)
    tuner.step(1.0)
    tuner.step(2.0)  # a miss: the deepest group is unfrozen, its BatchNorm stays frozen
    lines = describe_groups(model, tuner.groups).splitlines()
    parameters = dict(model.named_parameters())
    head = ("classifier.1.weight", "classifier.1.bias")
    expected = [
        [str(g.index), g.name, sum(parameters[n].numel() for n in g.parameter_names)]
        for g in tuner.groups
    ] + [["-", "head (in no group)", sum(parameters[n].numel() for n in head)]]
    states = ["frozen"] * 3 + ["partly frozen", "trainable"]
    assert len(lines) == 1 + len(expected)
    for line, (index, label, count), state in zip(lines[1:], expected, states, strict=True):
        assert line.split(maxsplit=1)[0] == index
        assert f" {label} " in line and f" {count:,}  {state}" in line, line
